// Plays a live sample-mmo server through the C# binding, over UDP: connects, enters the world,
// subscribes to avatars near its player, walks east and sees its own position change, and gets
// an error reply for a bad call. Usage: mono LiveCheck.exe http://127.0.0.1:PORT
// Prints "LIVE OK" and exits 0 on success; exits 1 with the reason otherwise. Built with
// the generated code of the server's schema (orrery generate --lang csharp) by
// client/ffi/tests/csharp.rs.
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Threading;
using Orrery;
using Orrery.Generated;

public static class LiveCheck
{
    static OrreryClient client;
    static Identity me;

    static void Fail(string why)
    {
        Console.WriteLine("FAIL: " + why);
        Environment.Exit(1);
    }

    // Polls and drains events until one matches (deadline 20 s).
    static Event WaitFor(string what, Func<Event, bool> want)
    {
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < TimeSpan.FromSeconds(20))
        {
            client.Poll();
            Event ev;
            while (client.TryNextEvent(out ev))
            {
                if (ev.Kind == EventKind.Disconnected && !what.Contains("disconnect")) Fail("disconnected while waiting for " + what + ": " + ev.Message);
                if (want(ev)) return ev;
            }
            Thread.Sleep(5);
        }
        Fail("timed out waiting for " + what);
        return null;
    }

    static Event Reply(uint id) { return WaitFor("reply " + id, e => e.Kind == EventKind.ReducerReply && e.Id == id); }

    // The own avatar, if the event is an insert or update of it.
    static Avatar Own(Event e)
    {
        if ((e.Kind != EventKind.RowInsert && e.Kind != EventKind.RowUpdate) || e.TableId != Avatar.TableId) return null;
        var a = Avatar.Decode(e.Row);
        return a.Owner == me ? a : null;
    }

    public static int Main(string[] args)
    {
        try
        {
            client = OrreryClient.Connect(args[0]);
        }
        catch (OrreryException e)
        {
            Fail("connect: " + e.Message);
        }
        Console.WriteLine("native library " + OrreryClient.Version + ", module " + client.Schema.Name);
        me = WaitFor("connected", e => e.Kind == EventKind.Connected).Identity;
        Console.WriteLine("connected as " + me);

        var entered = Reply(client.EnterWorld("cs_player"));
        if (!entered.Ok) Fail("enter_world: " + entered.Message);

        uint query = client.Subscribe("SELECT * FROM avatar WHERE within(position, :focus, 100)");
        Avatar start = null;
        bool applied = false;
        WaitFor("the subscription and the own avatar", e =>
        {
            if (e.Kind == EventKind.SubscriptionError) Fail("subscription: " + e.Message);
            if (e.Kind == EventKind.SubscriptionApplied && e.Id == query) applied = true;
            start = start ?? Own(e);
            return applied && start != null;
        });
        Console.WriteLine("own avatar " + start.Name + " at " + start.Position);

        var walk = Reply(client.SetInput(new Vec2(1, 0), false));
        if (!walk.Ok) Fail("set_input: " + walk.Message);
        Avatar moved = null;
        WaitFor("the own avatar to move east", e =>
        {
            var a = Own(e);
            if (a != null && a.Position.X > start.Position.X + 0.5f) moved = a;
            return moved != null;
        });
        Console.WriteLine("moved to " + moved.Position);

        // The same call by JSON, and a bad call: a name that is too short.
        var bad = Reply(client.EnterWorld("x"));
        if (bad.Ok) Fail("enter_world(\"x\") was accepted");
        Console.WriteLine("bad call refused: " + bad.Message);
        var badJson = Reply(client.CallJson("enter_world", "[\"y\"]"));
        if (badJson.Ok || !badJson.Message.Contains("3-16")) Fail("JSON call: " + badJson.Message);
        try
        {
            client.CallJson("enter_world", "[1]");
            Fail("mistyped JSON arguments were sent");
        }
        catch (OrreryException e)
        {
            if (e.Status != Status.BadArguments) Fail("mistyped arguments: " + e.Message);
        }

        client.Disconnect();
        var gone = WaitFor("disconnected", e => e.Kind == EventKind.Disconnected);
        Console.WriteLine("disconnected: " + gone.Message);
        client.Dispose();
        try
        {
            client.Poll();
            Fail("a disposed client polled");
        }
        catch (OrreryException e)
        {
            if (e.Status != Status.InvalidHandle) Fail("disposed client: " + e.Message);
        }
        Console.WriteLine("LIVE OK");
        return 0;
    }
}
