// Checks the C# row-format reader and writer against the shared vectors
// (client/ffi/tests/vectors/row_vectors.json): each vector decodes to its value or fails, and
// canonical ones encode back to their bytes. Usage: mono VectorsCheck.exe row_vectors.json
// Prints "N passed, M failed"; exits 1 on any failure. Run by client/ffi/tests/csharp.rs.
using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using Orrery;

public static class VectorsCheck
{
    static byte[] Unhex(string h)
    {
        var b = new byte[h.Length / 2];
        for (int i = 0; i < b.Length; i++) b[i] = Convert.ToByte(h.Substring(2 * i, 2), 16);
        return b;
    }

    static bool Num(Json e, double got)
    {
        if (e.Kind == Json.JsonKind.Null) return double.IsNaN(got) || double.IsInfinity(got);
        return e.Kind == Json.JsonKind.Number && double.Parse(e.Text, NumberStyles.Float, CultureInfo.InvariantCulture) == got;
    }

    static bool Floats(Json e, params float[] xs)
    {
        if (e.Kind != Json.JsonKind.Array || e.Items.Count != xs.Length) return false;
        for (int i = 0; i < xs.Length; i++) if (!Num(e.Items[i], xs[i])) return false;
        return true;
    }

    // Whether decoded value v of type t is the expected JSON e (ROW_FORMAT.md §5).
    static bool Matches(TypeDesc t, object v, Json e)
    {
        switch (t.Kind)
        {
            case "bool": return e.Kind == Json.JsonKind.Bool && e.Bool == (bool)v;
            case "u8": case "u16": case "u32": case "u64": case "connection_id": case "duration":
                return e.Kind == Json.JsonKind.Number && ulong.Parse(e.Text, CultureInfo.InvariantCulture) == (ulong)v;
            case "i8": case "i16": case "i32": case "i64": case "timestamp":
                return e.Kind == Json.JsonKind.Number && long.Parse(e.Text, CultureInfo.InvariantCulture) == (long)v;
            case "f32": return Num(e, (float)v);
            case "f64": return Num(e, (double)v);
            case "string": return e.Kind == Json.JsonKind.String && e.Text == (string)v;
            case "identity": return e.Kind == Json.JsonKind.String && e.Text == ((Identity)v).ToHex();
            case "schedule_at":
                {
                    var s = (ScheduleAt)v;
                    var x = e[s.IsInterval ? "interval" : "at"];
                    return e.Fields.Count == 1 && x != null && long.Parse(x.Text, CultureInfo.InvariantCulture) == s.Micros;
                }
            case "vec2": { var p = (Vec2)v; return Floats(e, p.X, p.Y); }
            case "vec3": { var p = (Vec3)v; return Floats(e, p.X, p.Y, p.Z); }
            case "option":
                {
                    var o = (OptionValue)v;
                    if (!o.HasValue) return e.Kind == Json.JsonKind.Null;
                    return Matches(t.Of, o.Value, e);
                }
            case "array":
                {
                    var list = (List<object>)v;
                    if (e.Kind != Json.JsonKind.Array || e.Items.Count != list.Count) return false;
                    for (int i = 0; i < list.Count; i++) if (!Matches(t.Of, list[i], e.Items[i])) return false;
                    return true;
                }
            case "struct":
                {
                    var fields = (object[])v;
                    if (e.Kind != Json.JsonKind.Object || e.Fields.Count != fields.Length) return false;
                    for (int i = 0; i < fields.Length; i++)
                    {
                        var x = e[t.Fields[i].Name];
                        if (x == null || !Matches(t.Fields[i].Type, fields[i], x)) return false;
                    }
                    return true;
                }
            case "enum":
                {
                    var en = (EnumValue)v;
                    var variant = t.Variants[en.Tag];
                    if (variant.Fields.Count == 0) return e.Kind == Json.JsonKind.String && e.Text == variant.Name;
                    var items = e[variant.Name];
                    if (e.Kind != Json.JsonKind.Object || e.Fields.Count != 1 || items == null || items.Items.Count != en.Fields.Length) return false;
                    for (int i = 0; i < en.Fields.Length; i++) if (!Matches(variant.Fields[i].Type, en.Fields[i], items.Items[i])) return false;
                    return true;
                }
        }
        return false;
    }

    public static int Main(string[] args)
    {
        var doc = Json.Parse(File.ReadAllText(args[0]));
        int passed = 0, failed = 0;
        foreach (var v in doc["vectors"].Items)
        {
            string name = v["name"].Text;
            var type = TypeDesc.FromJson(v["type"]);
            var bytes = Unhex(v["hex"].Text);
            bool wantError = v["error"] != null;
            string problem = null;
            try
            {
                var value = Values.DecodeAll(type, bytes);
                if (wantError) problem = "decoded, expected an error (" + v["error"].Text + ")";
                else if (!Matches(type, value, v["value"])) problem = "decoded to a different value";
                else if (v["canonical"] == null || v["canonical"].Bool)
                {
                    var w = new RowWriter();
                    Values.Encode(type, value, w);
                    if (BitConverter.ToString(w.ToArray()) != BitConverter.ToString(bytes))
                        problem = "re-encoded as " + BitConverter.ToString(w.ToArray());
                }
            }
            catch (RowFormatException e)
            {
                if (!wantError) problem = "failed: " + e.Message;
            }
            if (problem == null) passed++;
            else { failed++; Console.WriteLine("FAIL " + name + ": " + problem); }
        }
        Console.WriteLine(passed + " passed, " + failed + " failed");
        return failed == 0 && passed > 0 ? 0 : 1;
    }
}
