// Orrery.Client — the row format (netcode/ROW_FORMAT.md) in C#: RowReader decodes values
// BinaryReader-style from row bytes, RowWriter encodes them (reducer arguments). Decoding
// follows the spec's hostile-input rules: every read checks the remaining length, varints are
// at most 10 bytes and range-checked, tags and UTF-8 are validated, lengths are checked before
// allocating; any violation throws RowFormatException.
using System;
using System.Collections.Generic;
using System.Text;

namespace Orrery
{
    /// <summary>Bytes that are not a valid encoding of the expected type.</summary>
    public class RowFormatException : Exception
    {
        public RowFormatException(string message) : base(message) { }
    }

    /// <summary>Reads row-format values from a byte range, front to back.</summary>
    public sealed class RowReader
    {
        private static readonly UTF8Encoding StrictUtf8 = new UTF8Encoding(false, true);
        private readonly byte[] data;
        private readonly int end;
        private int pos;

        public RowReader(byte[] data) : this(data, 0, data == null ? 0 : data.Length) { }

        public RowReader(byte[] data, int offset, int count)
        {
            if (data == null) throw new ArgumentNullException("data");
            if (offset < 0 || count < 0 || offset + count > data.Length) throw new ArgumentOutOfRangeException("count");
            this.data = data; pos = offset; end = offset + count;
        }

        /// <summary>Bytes not read yet.</summary>
        public int Remaining { get { return end - pos; } }

        /// <summary>Throws unless every byte was read (a row or argument list must consume its input exactly).</summary>
        public void EnsureEnd()
        {
            if (pos != end) throw new RowFormatException((end - pos) + " trailing byte(s) after the value");
        }

        private void Need(int n, string what)
        {
            if (end - pos < n) throw new RowFormatException("unexpected end of input: needed " + (n - (end - pos)) + " more byte(s) for " + what);
        }

        /// <summary>An unsigned LEB128 varint of at most 10 bytes that fits in 64 bits.</summary>
        public ulong ReadVarint(string what = "varint")
        {
            ulong result = 0;
            for (int i = 0; i < 10; i++)
            {
                Need(1, what);
                byte b = data[pos];
                if (i == 9 && b > 1) throw new RowFormatException("varint too long or out of range for " + what);
                result |= (ulong)(b & 0x7f) << (7 * i);
                pos++;
                if ((b & 0x80) == 0) return result;
            }
            throw new RowFormatException("varint too long or out of range for " + what);
        }

        private ulong ReadUnsigned(ulong max, string what)
        {
            ulong v = ReadVarint(what);
            if (v > max) throw new RowFormatException("varint too long or out of range for " + what);
            return v;
        }

        private long ReadSigned(long min, long max, string what)
        {
            ulong z = ReadVarint(what);
            long v = (long)(z >> 1) ^ -(long)(z & 1);
            if (v < min || v > max) throw new RowFormatException("varint too long or out of range for " + what);
            return v;
        }

        public bool ReadBool()
        {
            Need(1, "bool");
            byte b = data[pos++];
            if (b > 1) throw new RowFormatException("invalid bool byte 0x" + b.ToString("x2"));
            return b == 1;
        }

        public byte ReadU8() { Need(1, "u8"); return data[pos++]; }
        public ushort ReadU16() { return (ushort)ReadUnsigned(ushort.MaxValue, "u16"); }
        public uint ReadU32() { return (uint)ReadUnsigned(uint.MaxValue, "u32"); }
        public ulong ReadU64() { return ReadVarint("u64"); }
        public sbyte ReadI8() { Need(1, "i8"); return (sbyte)data[pos++]; }
        public short ReadI16() { return (short)ReadSigned(short.MinValue, short.MaxValue, "i16"); }
        public int ReadI32() { return (int)ReadSigned(int.MinValue, int.MaxValue, "i32"); }
        public long ReadI64() { return ReadSigned(long.MinValue, long.MaxValue, "i64"); }

        public float ReadF32()
        {
            Need(4, "f32");
            float v = BitConverter.IsLittleEndian ? BitConverter.ToSingle(data, pos) : BitConverter.ToSingle(Reversed(4), 0);
            pos += 4;
            return v;
        }

        public double ReadF64()
        {
            Need(8, "f64");
            double v = BitConverter.IsLittleEndian ? BitConverter.ToDouble(data, pos) : BitConverter.ToDouble(Reversed(8), 0);
            pos += 8;
            return v;
        }

        private byte[] Reversed(int n)
        {
            var b = new byte[n];
            Array.Copy(data, pos, b, 0, n);
            Array.Reverse(b);
            return b;
        }

        /// <summary>A length prefix (string bytes, array items) checked against the bytes left: each item takes at least <paramref name="minItemSize"/> bytes (at least 1).</summary>
        public int ReadLength(int minItemSize, string what = "length")
        {
            ulong len = ReadVarint(what);
            ulong need = len * (ulong)Math.Max(minItemSize, 1);
            if (len > int.MaxValue || need / (ulong)Math.Max(minItemSize, 1) != len || need > (ulong)(end - pos))
                throw new RowFormatException("length " + len + " exceeds the " + (end - pos) + " byte(s) left in the input");
            return (int)len;
        }

        public string ReadString()
        {
            int len = ReadLength(1, "string");
            try
            {
                string s = StrictUtf8.GetString(data, pos, len);
                pos += len;
                return s;
            }
            catch (ArgumentException)
            {
                throw new RowFormatException("string is not valid UTF-8");
            }
        }

        /// <summary><paramref name="n"/> raw bytes.</summary>
        public byte[] ReadRaw(int n)
        {
            Need(n, "bytes");
            var b = new byte[n];
            Array.Copy(data, pos, b, 0, n);
            pos += n;
            return b;
        }

        /// <summary>A Vec&lt;u8&gt;: varint length, then the bytes.</summary>
        public byte[] ReadByteArray() { return ReadRaw(ReadLength(1, "bytes")); }

        public Identity ReadIdentity() { Need(32, "identity"); return new Identity(ReadRaw(32)); }
        public ulong ReadConnectionId() { return ReadVarint("connection id"); }
        /// <summary>Microseconds since the Unix epoch.</summary>
        public long ReadTimestamp() { return ReadSigned(long.MinValue, long.MaxValue, "timestamp"); }
        /// <summary>Microseconds.</summary>
        public ulong ReadDuration() { return ReadVarint("duration"); }

        public ScheduleAt ReadScheduleAt()
        {
            Need(1, "schedule_at");
            byte tag = data[pos++];
            if (tag == 0) return ScheduleAt.Interval(ReadDuration());
            if (tag == 1) return ScheduleAt.At(ReadTimestamp());
            throw new RowFormatException("invalid tag " + tag + " for schedule_at");
        }

        public Vec2 ReadVec2() { float x = ReadF32(); return new Vec2(x, ReadF32()); }
        public Vec3 ReadVec3() { float x = ReadF32(); float y = ReadF32(); return new Vec3(x, y, ReadF32()); }

        /// <summary>An option's tag byte: true for some (a value follows), false for none.</summary>
        public bool ReadOptionTag()
        {
            Need(1, "option");
            byte tag = data[pos++];
            if (tag > 1) throw new RowFormatException("invalid tag " + tag + " for option");
            return tag == 1;
        }

        /// <summary>An enum's variant index (varint), checked against the number of variants.</summary>
        public int ReadEnumTag(int variants, string what = "enum")
        {
            ulong tag = ReadVarint(what);
            if (tag >= (ulong)variants) throw new RowFormatException("invalid tag " + tag + " for " + what);
            return (int)tag;
        }

        /// <summary>An array: a checked count, then <paramref name="item"/> per item.</summary>
        public List<T> ReadList<T>(Func<RowReader, T> item, int minItemSize = 1)
        {
            int n = ReadLength(minItemSize, "array");
            var list = new List<T>(n);
            for (int i = 0; i < n; i++) list.Add(item(this));
            return list;
        }
    }

    /// <summary>Writes row-format values (reducer arguments, rows) into a growing buffer.</summary>
    public sealed class RowWriter
    {
        private static readonly UTF8Encoding Utf8 = new UTF8Encoding(false, true);
        private byte[] buf = new byte[64];
        private int len;

        public int Length { get { return len; } }

        public byte[] ToArray()
        {
            var b = new byte[len];
            Array.Copy(buf, b, len);
            return b;
        }

        private void Grow(int n)
        {
            if (len + n <= buf.Length) return;
            var next = new byte[Math.Max(buf.Length * 2, len + n)];
            Array.Copy(buf, next, len);
            buf = next;
        }

        public void WriteRaw(byte[] bytes)
        {
            Grow(bytes.Length);
            Array.Copy(bytes, 0, buf, len, bytes.Length);
            len += bytes.Length;
        }

        public void WriteVarint(ulong v)
        {
            Grow(10);
            while (v >= 0x80) { buf[len++] = (byte)(v | 0x80); v >>= 7; }
            buf[len++] = (byte)v;
        }

        private void WriteZigzag(long v) { WriteVarint((ulong)((v << 1) ^ (v >> 63))); }

        public void WriteBool(bool v) { Grow(1); buf[len++] = (byte)(v ? 1 : 0); }
        public void WriteU8(byte v) { Grow(1); buf[len++] = v; }
        public void WriteU16(ushort v) { WriteVarint(v); }
        public void WriteU32(uint v) { WriteVarint(v); }
        public void WriteU64(ulong v) { WriteVarint(v); }
        public void WriteI8(sbyte v) { Grow(1); buf[len++] = (byte)v; }
        public void WriteI16(short v) { WriteZigzag(v); }
        public void WriteI32(int v) { WriteZigzag(v); }
        public void WriteI64(long v) { WriteZigzag(v); }

        public void WriteF32(float v)
        {
            var b = BitConverter.GetBytes(v);
            if (!BitConverter.IsLittleEndian) Array.Reverse(b);
            WriteRaw(b);
        }

        public void WriteF64(double v)
        {
            var b = BitConverter.GetBytes(v);
            if (!BitConverter.IsLittleEndian) Array.Reverse(b);
            WriteRaw(b);
        }

        public void WriteString(string s)
        {
            var b = Utf8.GetBytes(s ?? "");
            WriteVarint((ulong)b.Length);
            WriteRaw(b);
        }

        public void WriteByteArray(byte[] b) { b = b ?? new byte[0]; WriteVarint((ulong)b.Length); WriteRaw(b); }
        public void WriteIdentity(Identity id) { WriteRaw(id.ToBytes()); }
        public void WriteConnectionId(ulong v) { WriteVarint(v); }
        public void WriteTimestamp(long micros) { WriteZigzag(micros); }
        public void WriteDuration(ulong micros) { WriteVarint(micros); }

        public void WriteScheduleAt(ScheduleAt at)
        {
            if (at.IsInterval) { WriteU8(0); WriteDuration((ulong)at.Micros); }
            else { WriteU8(1); WriteTimestamp(at.Micros); }
        }

        public void WriteVec2(Vec2 v) { WriteF32(v.X); WriteF32(v.Y); }
        public void WriteVec3(Vec3 v) { WriteF32(v.X); WriteF32(v.Y); WriteF32(v.Z); }
        public void WriteOptionTag(bool some) { WriteU8((byte)(some ? 1 : 0)); }
        public void WriteEnumTag(int tag) { WriteVarint((ulong)tag); }

        public void WriteList<T>(List<T> items, Action<RowWriter, T> item)
        {
            if (items == null) { WriteVarint(0); return; }
            WriteVarint((ulong)items.Count);
            foreach (var x in items) item(this, x);
        }
    }
}
