package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/hsmkeys/hsmkeys/provider"
)

var versionSpec = spec{
	path:  "version",
	usage: "version [--module PATH | --uri PKCS11-URI]",
	about: `Prints the version of hsmkeys: the module version and VCS revision
recorded by the Go toolchain at build time (a "go install" of a tagged
release, or a build from a git checkout), and the Go version. With a
module named on the command line (--module, or --uri with a module-path),
also what that PKCS#11 library says of itself through C_GetInfo; no token
or PIN is needed. "hsmkeys --version" is the same as "hsmkeys version".`,
	examples: `hsmkeys --version
hsmkeys version --module /usr/lib/softhsm/libsofthsm2.so
hsmkeys --uri 'pkcs11:token=hsmkeys?module-path=/usr/lib/softhsm/libsofthsm2.so' version --json`,
}

type versionJSON struct {
	Version  string      `json:"version"`
	Revision string      `json:"revision,omitempty"`
	Time     string      `json:"revision_time,omitempty"`
	Modified bool        `json:"modified,omitempty"`
	Go       string      `json:"go"`
	Platform string      `json:"platform"`
	Module   *moduleJSON `json:"module,omitempty"`
}

// moduleJSON is the library's C_GetInfo (PKCS#11 v2.40 base §5.4).
type moduleJSON struct {
	Path            string `json:"path"`
	Manufacturer    string `json:"manufacturer"`
	Description     string `json:"description"`
	LibraryVersion  string `json:"library_version"`
	CryptokiVersion string `json:"cryptoki_version"`
}

// buildVersion reads what the toolchain recorded in the binary
// (runtime/debug.ReadBuildInfo): "(devel)" for a plain "go build" outside
// a module proxy, the tag for "go install ...@v1.2.3".
func buildVersion() versionJSON {
	v := versionJSON{Version: "(unknown)", Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	if bi.Main.Version != "" {
		v.Version = bi.Main.Version
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Revision = s.Value
		case "vcs.time":
			v.Time = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	return v
}

func (c *cli) cmdVersion(ctx context.Context, args []string) error {
	fs := c.newFlags(versionSpec)
	operands, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if err := noOperands(fs, operands); err != nil {
		return err
	}
	v := buildVersion()
	if c.moduleSet || c.uriSet && uriAttrs(c.uri)["module-path"] != "" {
		mod, err := c.modulePath()
		if err != nil {
			return err
		}
		mi, err := provider.ModuleInfoOf(provider.Config{Module: mod, InitArgs: c.initArgs})
		if err != nil {
			return err
		}
		v.Module = &moduleJSON{mi.Path, mi.Manufacturer, mi.Description, mi.LibraryVersion, mi.CryptokiVersion}
	}
	if c.json {
		return c.writeJSON(v)
	}
	rev := v.Revision
	if rev == "" {
		rev = "unknown revision"
	} else if v.Modified {
		rev += " (modified)"
	}
	fmt.Fprintf(c.stdout, "hsmkeys %s (%s) %s %s\n", v.Version, rev, v.Go, v.Platform)
	if m := v.Module; m != nil {
		fmt.Fprintf(c.stdout, "module %s: %s %s, version %s, PKCS#11 %s\n", m.Path, m.Manufacturer, m.Description, m.LibraryVersion, m.CryptokiVersion)
	}
	return nil
}
