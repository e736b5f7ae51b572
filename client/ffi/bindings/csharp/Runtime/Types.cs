// Orrery.Client — value types of the row format that C# has no exact equivalent for:
// Identity (32 bytes), Vec2/Vec3 (f32 components; convert to UnityEngine.Vector2/3 in game
// code, this assembly references no engine), ScheduleAt. Timestamps and durations are
// microseconds (long / ulong), as on the wire.
using System;
using System.Text;

namespace Orrery
{
    /// <summary>A 32-byte identity (who a player is). Compared by value; printed as 64 hex characters.</summary>
    public struct Identity : IEquatable<Identity>
    {
        private readonly byte[] bytes;

        /// <summary>An identity from its 32 bytes (copied).</summary>
        public Identity(byte[] value)
        {
            if (value == null || value.Length != 32)
                throw new ArgumentException("an identity is 32 bytes");
            bytes = (byte[])value.Clone();
        }

        /// <summary>A copy of the 32 bytes.</summary>
        public byte[] ToBytes() { return bytes == null ? new byte[32] : (byte[])bytes.Clone(); }

        /// <summary>The identity from 64 hex characters.</summary>
        public static Identity FromHex(string hex)
        {
            if (hex == null || hex.Length != 64) throw new FormatException("an identity is 64 hex characters");
            var b = new byte[32];
            for (int i = 0; i < 32; i++) b[i] = Convert.ToByte(hex.Substring(2 * i, 2), 16);
            return new Identity(b);
        }

        /// <summary>64 lower-case hex characters.</summary>
        public string ToHex()
        {
            var sb = new StringBuilder(64);
            foreach (var b in ToBytes()) sb.Append(b.ToString("x2"));
            return sb.ToString();
        }

        public bool Equals(Identity other)
        {
            var a = ToBytes(); var b = other.ToBytes();
            for (int i = 0; i < 32; i++) if (a[i] != b[i]) return false;
            return true;
        }
        public override bool Equals(object obj) { return obj is Identity && Equals((Identity)obj); }
        public override int GetHashCode() { var b = ToBytes(); return BitConverter.ToInt32(b, 0) ^ BitConverter.ToInt32(b, 28); }
        public override string ToString() { return ToHex(); }
        public static bool operator ==(Identity a, Identity b) { return a.Equals(b); }
        public static bool operator !=(Identity a, Identity b) { return !a.Equals(b); }
    }

    /// <summary>Two f32 components (the row format's vec2).</summary>
    public struct Vec2 : IEquatable<Vec2>
    {
        public float X, Y;
        public Vec2(float x, float y) { X = x; Y = y; }
        public bool Equals(Vec2 o) { return X.Equals(o.X) && Y.Equals(o.Y); }
        public override bool Equals(object obj) { return obj is Vec2 && Equals((Vec2)obj); }
        public override int GetHashCode() { return X.GetHashCode() * 31 + Y.GetHashCode(); }
        public override string ToString() { return "(" + X.ToString("R", System.Globalization.CultureInfo.InvariantCulture) + ", " + Y.ToString("R", System.Globalization.CultureInfo.InvariantCulture) + ")"; }
    }

    /// <summary>Three f32 components (the row format's vec3).</summary>
    public struct Vec3 : IEquatable<Vec3>
    {
        public float X, Y, Z;
        public Vec3(float x, float y, float z) { X = x; Y = y; Z = z; }
        public bool Equals(Vec3 o) { return X.Equals(o.X) && Y.Equals(o.Y) && Z.Equals(o.Z); }
        public override bool Equals(object obj) { return obj is Vec3 && Equals((Vec3)obj); }
        public override int GetHashCode() { return (X.GetHashCode() * 31 + Y.GetHashCode()) * 31 + Z.GetHashCode(); }
    }

    /// <summary>When a scheduled row fires: every <c>Micros</c> µs (interval) or at <c>Micros</c> µs since the Unix epoch.</summary>
    public struct ScheduleAt : IEquatable<ScheduleAt>
    {
        /// <summary>True: an interval (Micros ≥ 0); false: a point in time.</summary>
        public bool IsInterval;
        /// <summary>The interval or the timestamp, in microseconds.</summary>
        public long Micros;
        public static ScheduleAt Interval(ulong micros) { return new ScheduleAt { IsInterval = true, Micros = (long)micros }; }
        public static ScheduleAt At(long micros) { return new ScheduleAt { IsInterval = false, Micros = micros }; }
        public bool Equals(ScheduleAt o) { return IsInterval == o.IsInterval && Micros == o.Micros; }
        public override bool Equals(object obj) { return obj is ScheduleAt && Equals((ScheduleAt)obj); }
        public override int GetHashCode() { return Micros.GetHashCode() ^ (IsInterval ? 1 : 0); }
    }
}
