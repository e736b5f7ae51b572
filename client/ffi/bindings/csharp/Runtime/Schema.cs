// Orrery.Client — the module schema (GET /v1/schema, netcode/ROW_FORMAT.md §6) and
// schema-driven values: decode any row or argument list by its TypeDesc without generated
// code (tools, inspectors, tests), encode values back. Includes a small JSON reader, since
// the core must not depend on Unity's or .NET's JSON libraries. Generated code (orrery
// generate --lang csharp) is the fast, typed path for game code.
using System;
using System.Collections.Generic;
using System.Globalization;
using System.Text;

namespace Orrery
{
    /// <summary>A parsed JSON value. Numbers keep their text, so 64-bit integers stay exact.</summary>
    public sealed class Json
    {
        public enum JsonKind { Null, Bool, Number, String, Array, Object }
        public JsonKind Kind;
        public bool Bool;
        /// <summary>A string's value, or a number's text.</summary>
        public string Text;
        public List<Json> Items;
        public List<KeyValuePair<string, Json>> Fields;

        /// <summary>The field named <paramref name="key"/> of an object, or null.</summary>
        public Json this[string key]
        {
            get
            {
                if (Fields == null) return null;
                foreach (var f in Fields) if (f.Key == key) return f.Value;
                return null;
            }
        }

        public bool IsNull { get { return Kind == JsonKind.Null; } }

        public static Json Parse(string text)
        {
            int i = 0;
            var v = ParseValue(text, ref i);
            SkipWs(text, ref i);
            if (i != text.Length) throw new FormatException("JSON: trailing characters at " + i);
            return v;
        }

        private static void SkipWs(string s, ref int i)
        {
            while (i < s.Length && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
        }

        private static Json ParseValue(string s, ref int i)
        {
            SkipWs(s, ref i);
            if (i >= s.Length) throw new FormatException("JSON: unexpected end");
            char c = s[i];
            if (c == '{')
            {
                i++;
                var o = new Json { Kind = JsonKind.Object, Fields = new List<KeyValuePair<string, Json>>() };
                SkipWs(s, ref i);
                if (i < s.Length && s[i] == '}') { i++; return o; }
                while (true)
                {
                    SkipWs(s, ref i);
                    string key = ParseString(s, ref i);
                    SkipWs(s, ref i);
                    Expect(s, ref i, ':');
                    o.Fields.Add(new KeyValuePair<string, Json>(key, ParseValue(s, ref i)));
                    SkipWs(s, ref i);
                    if (i < s.Length && s[i] == ',') { i++; continue; }
                    Expect(s, ref i, '}');
                    return o;
                }
            }
            if (c == '[')
            {
                i++;
                var a = new Json { Kind = JsonKind.Array, Items = new List<Json>() };
                SkipWs(s, ref i);
                if (i < s.Length && s[i] == ']') { i++; return a; }
                while (true)
                {
                    a.Items.Add(ParseValue(s, ref i));
                    SkipWs(s, ref i);
                    if (i < s.Length && s[i] == ',') { i++; continue; }
                    Expect(s, ref i, ']');
                    return a;
                }
            }
            if (c == '"') return new Json { Kind = JsonKind.String, Text = ParseString(s, ref i) };
            if (Word(s, ref i, "true")) return new Json { Kind = JsonKind.Bool, Bool = true };
            if (Word(s, ref i, "false")) return new Json { Kind = JsonKind.Bool, Bool = false };
            if (Word(s, ref i, "null")) return new Json { Kind = JsonKind.Null };
            int start = i;
            while (i < s.Length && "+-0123456789.eE".IndexOf(s[i]) >= 0) i++;
            if (i == start) throw new FormatException("JSON: unexpected '" + c + "' at " + i);
            return new Json { Kind = JsonKind.Number, Text = s.Substring(start, i - start) };
        }

        private static bool Word(string s, ref int i, string w)
        {
            if (string.CompareOrdinal(s, i, w, 0, w.Length) != 0) return false;
            i += w.Length;
            return true;
        }

        private static void Expect(string s, ref int i, char c)
        {
            if (i >= s.Length || s[i] != c) throw new FormatException("JSON: expected '" + c + "' at " + i);
            i++;
        }

        private static string ParseString(string s, ref int i)
        {
            Expect(s, ref i, '"');
            var sb = new StringBuilder();
            while (true)
            {
                if (i >= s.Length) throw new FormatException("JSON: unterminated string");
                char c = s[i++];
                if (c == '"') return sb.ToString();
                if (c != '\\') { sb.Append(c); continue; }
                char e = s[i++];
                switch (e)
                {
                    case 'n': sb.Append('\n'); break;
                    case 't': sb.Append('\t'); break;
                    case 'r': sb.Append('\r'); break;
                    case 'b': sb.Append('\b'); break;
                    case 'f': sb.Append('\f'); break;
                    case 'u': sb.Append((char)Convert.ToInt32(s.Substring(i, 4), 16)); i += 4; break;
                    default: sb.Append(e); break;
                }
            }
        }
    }

    /// <summary>A type in the schema (ROW_FORMAT.md §6): Kind is "u32", "string", "option", "struct", ...</summary>
    public sealed class TypeDesc
    {
        public string Kind;
        /// <summary>The item type of an option or array.</summary>
        public TypeDesc Of;
        /// <summary>The name of a struct or enum type.</summary>
        public string Name;
        public List<FieldDesc> Fields = new List<FieldDesc>();
        public List<VariantDesc> Variants = new List<VariantDesc>();

        public static TypeDesc FromJson(Json j)
        {
            var t = new TypeDesc { Kind = j["kind"].Text };
            if (j["of"] != null) t.Of = FromJson(j["of"]);
            if (j["name"] != null) t.Name = j["name"].Text;
            if (j["fields"] != null) t.Fields = FieldDesc.ListFromJson(j["fields"]);
            if (j["variants"] != null)
                foreach (var v in j["variants"].Items)
                    t.Variants.Add(new VariantDesc { Name = v["name"].Text, Fields = FieldDesc.ListFromJson(v["fields"]) });
            return t;
        }
    }

    public sealed class FieldDesc
    {
        public string Name;
        public TypeDesc Type;

        internal static List<FieldDesc> ListFromJson(Json j)
        {
            var list = new List<FieldDesc>();
            foreach (var f in j.Items) list.Add(new FieldDesc { Name = f["name"].Text, Type = TypeDesc.FromJson(f["type"]) });
            return list;
        }
    }

    public sealed class VariantDesc
    {
        public string Name;
        public List<FieldDesc> Fields;
    }

    public sealed class TableSchema
    {
        public uint Id;
        public string Name;
        public string RustType;
        /// <summary>Columns in wire order, as fields.</summary>
        public List<FieldDesc> Columns = new List<FieldDesc>();
        public int PrimaryKey;
        public bool Event;
        /// <summary>"public", "private" or "owner".</summary>
        public string Visibility;

        /// <summary>The row as a struct type (a row is its columns back to back).</summary>
        public TypeDesc RowType { get { return new TypeDesc { Kind = "struct", Name = Name, Fields = Columns }; } }

        public int ColumnIndex(string name)
        {
            for (int i = 0; i < Columns.Count; i++) if (Columns[i].Name == name) return i;
            return -1;
        }
    }

    public sealed class ReducerSchema
    {
        public string Name;
        /// <summary>"user" (callable by clients), "init", "client_connected", "client_disconnected" or "scheduled".</summary>
        public string Kind;
        public List<FieldDesc> Params = new List<FieldDesc>();
    }

    /// <summary>The module schema served at GET /v1/schema (also returned by OrreryClient.SchemaJson).</summary>
    public sealed class ModuleSchema
    {
        public string Name;
        public List<TableSchema> Tables = new List<TableSchema>();
        public List<ReducerSchema> Reducers = new List<ReducerSchema>();

        public static ModuleSchema Parse(string json)
        {
            var j = Json.Parse(json);
            var m = new ModuleSchema { Name = j["name"].Text };
            foreach (var t in j["tables"].Items)
            {
                var table = new TableSchema
                {
                    Id = uint.Parse(t["id"].Text, CultureInfo.InvariantCulture),
                    Name = t["name"].Text,
                    RustType = t["rust_type"] == null ? t["name"].Text : t["rust_type"].Text,
                    PrimaryKey = int.Parse(t["primary_key"].Text, CultureInfo.InvariantCulture),
                    Event = t["event"] != null && t["event"].Bool,
                    Visibility = t["visibility"]["kind"].Text,
                };
                foreach (var c in t["columns"].Items)
                    table.Columns.Add(new FieldDesc { Name = c["name"].Text, Type = TypeDesc.FromJson(c["type"]) });
                m.Tables.Add(table);
            }
            foreach (var r in j["reducers"].Items)
                m.Reducers.Add(new ReducerSchema { Name = r["name"].Text, Kind = r["kind"].Text, Params = FieldDesc.ListFromJson(r["params"]) });
            return m;
        }

        public TableSchema TableById(uint id)
        {
            foreach (var t in Tables) if (t.Id == id) return t;
            return null;
        }

        public TableSchema Table(string name)
        {
            foreach (var t in Tables) if (t.Name == name) return t;
            return null;
        }
    }

    /// <summary>An option's value: HasValue false for none.</summary>
    public sealed class OptionValue
    {
        public bool HasValue;
        public object Value;
    }

    /// <summary>An enum's value: the variant index and its fields in order.</summary>
    public sealed class EnumValue
    {
        public int Tag;
        public object[] Fields;
    }

    /// <summary>Schema-driven values. Unsigned integers (u8..u64, connection_id, duration) are ulong,
    /// signed ones (i8..i64, timestamp) long; f32 float, f64 double, string, Identity, Vec2, Vec3,
    /// ScheduleAt; option OptionValue, array List&lt;object&gt;, struct object[] (fields in order), enum EnumValue.</summary>
    public static class Values
    {
        public static object Decode(TypeDesc t, RowReader r)
        {
            switch (t.Kind)
            {
                case "bool": return r.ReadBool();
                case "u8": return (ulong)r.ReadU8();
                case "u16": return (ulong)r.ReadU16();
                case "u32": return (ulong)r.ReadU32();
                case "u64": return r.ReadU64();
                case "i8": return (long)r.ReadI8();
                case "i16": return (long)r.ReadI16();
                case "i32": return (long)r.ReadI32();
                case "i64": return r.ReadI64();
                case "f32": return r.ReadF32();
                case "f64": return r.ReadF64();
                case "string": return r.ReadString();
                case "identity": return r.ReadIdentity();
                case "connection_id": return r.ReadConnectionId();
                case "timestamp": return r.ReadTimestamp();
                case "duration": return r.ReadDuration();
                case "schedule_at": return r.ReadScheduleAt();
                case "vec2": return r.ReadVec2();
                case "vec3": return r.ReadVec3();
                case "option":
                    return r.ReadOptionTag() ? new OptionValue { HasValue = true, Value = Decode(t.Of, r) } : new OptionValue();
                case "array":
                    {
                        int n = r.ReadLength(1, "array");
                        var list = new List<object>(n);
                        for (int i = 0; i < n; i++) list.Add(Decode(t.Of, r));
                        return list;
                    }
                case "struct":
                    {
                        var fields = new object[t.Fields.Count];
                        for (int i = 0; i < fields.Length; i++) fields[i] = Decode(t.Fields[i].Type, r);
                        return fields;
                    }
                case "enum":
                    {
                        int tag = r.ReadEnumTag(t.Variants.Count, t.Name ?? "enum");
                        var vf = t.Variants[tag].Fields;
                        var fields = new object[vf.Count];
                        for (int i = 0; i < fields.Length; i++) fields[i] = Decode(vf[i].Type, r);
                        return new EnumValue { Tag = tag, Fields = fields };
                    }
                default: throw new RowFormatException("unknown type kind " + t.Kind);
            }
        }

        /// <summary>Decodes bytes that must hold exactly one value of type <paramref name="t"/>.</summary>
        public static object DecodeAll(TypeDesc t, byte[] bytes)
        {
            var r = new RowReader(bytes);
            var v = Decode(t, r);
            r.EnsureEnd();
            return v;
        }

        /// <summary>A row's column values, in column order.</summary>
        public static object[] DecodeRow(TableSchema table, byte[] row)
        {
            return (object[])DecodeAll(table.RowType, row);
        }

        public static void Encode(TypeDesc t, object v, RowWriter w)
        {
            switch (t.Kind)
            {
                case "bool": w.WriteBool((bool)v); break;
                case "u8": w.WriteU8((byte)(ulong)v); break;
                case "u16": case "u32": case "u64": case "connection_id": case "duration": w.WriteVarint((ulong)v); break;
                case "i8": w.WriteI8((sbyte)(long)v); break;
                case "i16": case "i32": case "i64": case "timestamp": w.WriteI64((long)v); break;
                case "f32": w.WriteF32((float)v); break;
                case "f64": w.WriteF64((double)v); break;
                case "string": w.WriteString((string)v); break;
                case "identity": w.WriteIdentity((Identity)v); break;
                case "schedule_at": w.WriteScheduleAt((ScheduleAt)v); break;
                case "vec2": w.WriteVec2((Vec2)v); break;
                case "vec3": w.WriteVec3((Vec3)v); break;
                case "option":
                    {
                        var o = (OptionValue)v;
                        w.WriteOptionTag(o.HasValue);
                        if (o.HasValue) Encode(t.Of, o.Value, w);
                        break;
                    }
                case "array":
                    {
                        var list = (List<object>)v;
                        w.WriteVarint((ulong)list.Count);
                        foreach (var x in list) Encode(t.Of, x, w);
                        break;
                    }
                case "struct":
                    {
                        var fields = (object[])v;
                        for (int i = 0; i < t.Fields.Count; i++) Encode(t.Fields[i].Type, fields[i], w);
                        break;
                    }
                case "enum":
                    {
                        var e = (EnumValue)v;
                        w.WriteEnumTag(e.Tag);
                        var vf = t.Variants[e.Tag].Fields;
                        for (int i = 0; i < vf.Count; i++) Encode(vf[i].Type, e.Fields[i], w);
                        break;
                    }
                default: throw new ArgumentException("unknown type kind " + t.Kind);
            }
        }
    }
}
