// An Unreal Engine module for the Orrery C++ binding: copy this folder into your project's
// Source/ (or a plugin's), set ORRERY_ROOT to the Orrery checkout (or copy include/ and the
// library next to it), and add "OrreryClient" to your game module's dependencies. The binding
// is header-only and exception-free; the native library is the staticlib built by
// `cargo build --release -p orrery-client-ffi` (liborrery_client_ffi.a, orrery_client_ffi.lib).
using System;
using System.IO;
using UnrealBuildTool;

public class OrreryClient : ModuleRules
{
    public OrreryClient(ReadOnlyTargetRules Target) : base(Target)
    {
        Type = ModuleType.External;
        string Root = Environment.GetEnvironmentVariable("ORRERY_ROOT") ?? Path.Combine(ModuleDirectory, "..", "..", "..", "..", "..", "..");
        PublicIncludePaths.Add(Path.Combine(Root, "client", "ffi", "include"));
        PublicIncludePaths.Add(Path.Combine(Root, "client", "ffi", "bindings", "cpp", "include"));
        string Lib = Path.Combine(Root, "target", "release");
        if (Target.Platform == UnrealTargetPlatform.Win64)
        {
            PublicAdditionalLibraries.Add(Path.Combine(Lib, "orrery_client_ffi.lib"));
            PublicSystemLibraries.AddRange(new[] { "ws2_32.lib", "userenv.lib", "bcrypt.lib", "ntdll.lib", "advapi32.lib" });
        }
        else
        {
            PublicAdditionalLibraries.Add(Path.Combine(Lib, "liborrery_client_ffi.a"));
            PublicSystemLibraries.AddRange(new[] { "pthread", "dl", "m" });
        }
    }
}
