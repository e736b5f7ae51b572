// Orrery.Client — a connection to an Orrery server through the native library: connect
// (blocking for the control-plane HTTP calls), then once a frame Update() (or Poll() and
// TryNextEvent()) on the game's main thread. Events: connected, disconnected, row
// insert/update/delete (table id + row bytes; decode with generated code or Values),
// reducer replies, subscription answers. No Unity API is used, so it runs on mono and .NET.
using System;
using System.Collections.Generic;

namespace Orrery
{
    /// <summary>Status codes of the C ABI (OrreryStatus in orrery_client.h).</summary>
    public enum Status
    {
        Ok = 0, NullArgument = 1, InvalidArgument = 2, InvalidHandle = 3, ControlPlane = 4, Connect = 5,
        UnknownReducer = 6, BadArguments = 7, NotConnected = 8, UnknownQuery = 9, Io = 10, Panic = 11,
    }

    /// <summary>A failed call into the native library: its status and message.</summary>
    public class OrreryException : Exception
    {
        public readonly Status Status;
        public OrreryException(Status status, string message) : base(status + ": " + message) { Status = status; }
    }

    /// <summary>What an Event reports (OrreryEventKind in orrery_client.h).</summary>
    public enum EventKind : uint
    {
        None = 0, Connected = 1, Disconnected = 2, RowInsert = 3, RowUpdate = 4, RowDelete = 5,
        ReducerReply = 6, SubscriptionApplied = 7, SubscriptionError = 8, UpdateRejected = 9,
        /// <summary>The character moved to another zone (Id: the zone); the connection follows it.</summary>
        ZoneMove = 10,
    }

    /// <summary>One event, copied out of the native library.</summary>
    public sealed class Event
    {
        public EventKind Kind;
        /// <summary>The table of a row event.</summary>
        public uint TableId;
        /// <summary>The request id of a reducer reply; the query id of a subscription event.</summary>
        public uint Id;
        /// <summary>For a reducer reply: whether the reducer committed.</summary>
        public bool Ok;
        public ulong Tick;
        /// <summary>For Connected.</summary>
        public ulong ConnectionId;
        /// <summary>For Connected.</summary>
        public Identity Identity;
        /// <summary>The row (the new version for an update), in the row format.</summary>
        public byte[] Row;
        /// <summary>For an update: the previous version.</summary>
        public byte[] OldRow;
        /// <summary>The row's encoded primary key.</summary>
        public byte[] Pk;
        /// <summary>A disconnect reason or an error message.</summary>
        public string Message;

        public override string ToString() { return Kind + " table=" + TableId + " id=" + Id + " ok=" + Ok + " tick=" + Tick + (Message != "" ? " message=" + Message : ""); }
    }

    /// <summary>One client connection (see the file header). Not thread-safe for events: drain them on one thread.</summary>
    public sealed class OrreryClient : IDisposable
    {
        /// <summary>Flag for calls answered only once durable on disk.</summary>
        public const uint CallDurable = 1;

        private ulong handle;
        private ModuleSchema schema;

        /// <summary>Raised by Update() for each event, in order.</summary>
        public event Action<Event> EventReceived;

        private OrreryClient(ulong handle) { this.handle = handle; }

        /// <summary>The native library's version.</summary>
        public static string Version { get { return Native.Utf8String(Native.orrery_version()); } }

        private static void Check(int status)
        {
            if (status != 0) throw new OrreryException((Status)status, Native.Utf8String(Native.orrery_last_error()));
        }

        /// <summary>Connects through the control plane at <paramref name="serverUrl"/> (identity, schema, connect
        /// token: blocks for those HTTP calls) and starts the UDP handshake; Connected arrives through Update/Poll.
        /// <paramref name="token"/> null creates a new identity (keep <see cref="Token"/> to play it again).</summary>
        public static OrreryClient Connect(string serverUrl, string token = null, uint timeoutMs = 0)
        {
            ulong h;
            Check(Native.orrery_client_connect(Native.Utf8z(serverUrl), Native.Utf8z(token), timeoutMs, out h));
            return new OrreryClient(h);
        }

        /// <summary>The native handle (0 once disposed).</summary>
        public ulong Handle { get { return handle; } }

        /// <summary>The module schema JSON (GET /v1/schema).</summary>
        public string SchemaJson
        {
            get
            {
                IntPtr p; UIntPtr n;
                Check(Native.orrery_client_schema_json(handle, out p, out n));
                return System.Text.Encoding.UTF8.GetString(Native.Copy(p, n));
            }
        }

        /// <summary>The parsed schema.</summary>
        public ModuleSchema Schema { get { return schema ?? (schema = ModuleSchema.Parse(SchemaJson)); } }

        /// <summary>The identity token to save.</summary>
        public string Token
        {
            get
            {
                IntPtr p; UIntPtr n;
                Check(Native.orrery_client_token(handle, out p, out n));
                return System.Text.Encoding.UTF8.GetString(Native.Copy(p, n));
            }
        }

        /// <summary>Does the socket I/O and queues events; returns how many are pending. Call once a frame.</summary>
        public int Poll()
        {
            uint pending;
            Check(Native.orrery_client_poll(handle, out pending));
            return (int)pending;
        }

        /// <summary>The next queued event, if any.</summary>
        public bool TryNextEvent(out Event ev)
        {
            Native.NativeEvent n;
            Check(Native.orrery_client_next_event(handle, out n));
            if (n.Kind == (uint)EventKind.None) { ev = null; return false; }
            ev = new Event
            {
                Kind = (EventKind)n.Kind,
                TableId = n.TableId,
                Id = n.Id,
                Ok = n.Ok == 1,
                Tick = n.Tick,
                ConnectionId = n.ConnectionId,
                Identity = new Identity(n.Identity),
                Row = Native.Copy(n.Row, n.RowLen),
                OldRow = Native.Copy(n.OldRow, n.OldRowLen),
                Pk = Native.Copy(n.Pk, n.PkLen),
                Message = Native.Utf8String(n.Message),
            };
            return true;
        }

        /// <summary>Poll, then raise EventReceived for every queued event; returns the events handled.</summary>
        public int Update()
        {
            Poll();
            int handled = 0;
            Event ev;
            while (TryNextEvent(out ev))
            {
                handled++;
                var h = EventReceived;
                if (h != null) h(ev);
            }
            return handled;
        }

        /// <summary>Calls a reducer with arguments in the row format (what generated Encode* functions return);
        /// returns the request id of its ReducerReply.</summary>
        public uint CallRaw(string reducer, byte[] args, bool durable = false)
        {
            uint id;
            args = args ?? new byte[0];
            Check(Native.orrery_client_call(handle, Native.Utf8z(reducer), args, (UIntPtr)args.Length, durable ? CallDurable : 0, out id));
            return id;
        }

        /// <summary>Calls a reducer with JSON arguments (array by position, object by name); returns the request id.</summary>
        public uint CallJson(string reducer, string argsJson, bool durable = false)
        {
            uint id;
            Check(Native.orrery_client_call_json(handle, Native.Utf8z(reducer), Native.Utf8z(argsJson), durable ? CallDurable : 0, out id));
            return id;
        }

        /// <summary>Subscribes to the rows <paramref name="sql"/> selects; returns the query id.</summary>
        public uint Subscribe(string sql)
        {
            uint id;
            Check(Native.orrery_client_subscribe(handle, Native.Utf8z(sql), out id));
            return id;
        }

        public void Unsubscribe(uint queryId) { Check(Native.orrery_client_unsubscribe(handle, queryId)); }

        /// <summary>Tells the server; a Disconnected event follows.</summary>
        public void Disconnect() { Check(Native.orrery_client_disconnect(handle)); }

        /// <summary>Frees the native client (disconnecting it). The handle is dead afterwards.</summary>
        public void Dispose()
        {
            if (handle != 0) Native.orrery_client_destroy(handle);
            handle = 0;
        }

        ~OrreryClient()
        {
            if (handle != 0) Native.orrery_client_destroy(handle);
        }
    }
}
