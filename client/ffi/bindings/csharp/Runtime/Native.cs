// Orrery.Client — P/Invoke declarations of the orrery-client-ffi C ABI
// (client/ffi/include/orrery_client.h). Strings go in as NUL-terminated UTF-8 byte arrays,
// so marshalling is the same on mono, .NET and Unity on every platform.
using System;
using System.Runtime.InteropServices;
using System.Text;

namespace Orrery
{
    internal static class Native
    {
#if UNITY_IOS && !UNITY_EDITOR
        private const string Lib = "__Internal"; // the staticlib linked into the player
#else
        private const string Lib = "orrery_client_ffi"; // liborrery_client_ffi.so / .dylib, orrery_client_ffi.dll
#endif

        [StructLayout(LayoutKind.Sequential)]
        internal struct NativeEvent
        {
            public uint Kind;
            public uint TableId;
            public uint Id;
            public uint Ok;
            public ulong Tick;
            public ulong ConnectionId;
            [MarshalAs(UnmanagedType.ByValArray, SizeConst = 32)]
            public byte[] Identity;
            public IntPtr Row;
            public UIntPtr RowLen;
            public IntPtr OldRow;
            public UIntPtr OldRowLen;
            public IntPtr Pk;
            public UIntPtr PkLen;
            public IntPtr Message;
            public UIntPtr MessageLen;
        }

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern IntPtr orrery_version();

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern IntPtr orrery_last_error();

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int orrery_client_connect(byte[] serverUrl, byte[] token, uint timeoutMs, out ulong handle);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int orrery_client_destroy(ulong client);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int orrery_client_poll(ulong client, out uint pending);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int orrery_client_next_event(ulong client, out NativeEvent ev);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int orrery_client_schema_json(ulong client, out IntPtr json, out UIntPtr len);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int orrery_client_token(ulong client, out IntPtr token, out UIntPtr len);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int orrery_client_call(ulong client, byte[] reducer, byte[] args, UIntPtr argsLen, uint flags, out uint requestId);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int orrery_client_call_json(ulong client, byte[] reducer, byte[] argsJson, uint flags, out uint requestId);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int orrery_client_subscribe(ulong client, byte[] sql, out uint queryId);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int orrery_client_unsubscribe(ulong client, uint queryId);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int orrery_client_disconnect(ulong client);

        /// <summary>A NUL-terminated UTF-8 copy of <paramref name="s"/> (null stays null).</summary>
        internal static byte[] Utf8z(string s)
        {
            if (s == null) return null;
            var n = Encoding.UTF8.GetByteCount(s);
            var b = new byte[n + 1];
            Encoding.UTF8.GetBytes(s, 0, s.Length, b, 0);
            return b;
        }

        /// <summary><paramref name="len"/> bytes at <paramref name="ptr"/> (an empty array for NULL).</summary>
        internal static byte[] Copy(IntPtr ptr, UIntPtr len)
        {
            int n = checked((int)len.ToUInt64());
            var b = new byte[n];
            if (n > 0) Marshal.Copy(ptr, b, 0, n);
            return b;
        }

        /// <summary>The NUL-terminated UTF-8 string at <paramref name="ptr"/>.</summary>
        internal static string Utf8String(IntPtr ptr)
        {
            if (ptr == IntPtr.Zero) return "";
            int n = 0;
            while (Marshal.ReadByte(ptr, n) != 0) n++;
            var b = new byte[n];
            Marshal.Copy(ptr, b, 0, n);
            return Encoding.UTF8.GetString(b);
        }
    }
}
