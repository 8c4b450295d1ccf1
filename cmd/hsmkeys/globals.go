package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/hsmkeys/hsmkeys/provider"
)

// globalFlag is a flag every command accepts, before or after its name.
// The table drives the flag sets, the help, the completion scripts and the
// man page, so none of them can forget one.
type globalFlag struct {
	name  string
	arg   string // "" for a boolean flag
	usage string
	def   string // what the default is, in words (it may come from the environment)
	env   string // the variable giving the default, if any
	bind  func(c *cli) *string
}

var globalFlags = []globalFlag{
	{name: "module", arg: "PATH", usage: "the PKCS#11 library (never SoftHSM or a vendor's by itself)", def: "$HSMKEYS_MODULE, else p11-kit's proxy (p11-kit-proxy.so), which offers the modules p11-kit registers", env: "HSMKEYS_MODULE",
		bind: func(c *cli) *string { return &c.module }},
	{name: "token", arg: "LABEL", usage: "the token, by label", def: "$HSMKEYS_TOKEN, else the only initialised token", env: "HSMKEYS_TOKEN",
		bind: func(c *cli) *string { return &c.token }},
	{name: "uri", arg: "PKCS11-URI", usage: "the module and token as an RFC 7512 URI; every attribute it names must match (module-name=softhsm2 as p11-kit names it; a PIN only as pin-source=file:..., never by value)", def: "$HSMKEYS_URI", env: "HSMKEYS_URI",
		bind: func(c *cli) *string { return &c.uri }},
	{name: "init-args", arg: "STRING", usage: "passed to the module's C_Initialize (NSS softoken: \"configdir='sql:/path/to/db' certPrefix='' keyPrefix='' secmod='secmod.db' flags=\")", def: "$HSMKEYS_INIT_ARGS, else none", env: "HSMKEYS_INIT_ARGS",
		bind: func(c *cli) *string { return &c.initArgs }},
	{name: "export-policy", arg: "none|trusted", usage: "trusted: session keys may leave wrapped under trusted KEKs; none: they never leave (selftest, doctor, bench --op generate|seal; commands that wrap keys for KEKs are refused)", def: "$HSMKEYS_EXPORT_POLICY, else trusted", env: "HSMKEYS_EXPORT_POLICY",
		bind: func(c *cli) *string { return &c.exportPolicy }},
	{name: "json", usage: "one JSON document on stdout, for scripts (with a schema version; on failure error, hint and exit status)", def: "false"},
	{name: "pin-file", arg: "FILE", usage: "the user PIN, first line of FILE", def: "$HSMKEYS_PIN, $HSMKEYS_PIN_FILE, else asked on the terminal",
		bind: func(c *cli) *string { return &c.pinFile }},
	{name: "so-pin-file", arg: "FILE", usage: "the Security Officer PIN, first line of FILE (kek create, import, import-public, init-token)", def: "$HSMKEYS_SO_PIN, $HSMKEYS_SO_PIN_FILE, else asked on the terminal",
		bind: func(c *cli) *string { return &c.soPINFile }},
}

func isGlobal(name string) bool {
	for _, g := range globalFlags {
		if g.name == name {
			return true
		}
	}
	return false
}

// addGlobals defines the global flags in fs. Their values start as what
// is set already: the environment for the first flag set, then whatever an
// earlier flag set (the one before the command) parsed.
func (c *cli) addGlobals(fs *flag.FlagSet, fromEnv bool) {
	for _, g := range globalFlags {
		if g.arg == "" {
			fs.BoolVar(&c.json, g.name, c.json, g.usage)
			continue
		}
		p := g.bind(c)
		if fromEnv && g.env != "" {
			*p = os.Getenv(g.env)
		}
		fs.StringVar(p, g.name, *p, g.usage)
	}
}

// noteGlobals records which global flags fs was given on the command line
// and checks them together: the same rules wherever they were written.
func (c *cli) noteGlobals(fs *flag.FlagSet) error {
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "module":
			c.moduleSet = true
		case "token":
			c.tokenSet = true
		case "uri":
			c.uriSet = true
		}
	})
	if c.tokenSet && c.uriSet {
		return &usageError{msg: "--token and --uri both name the token; give one of them"}
	}
	if c.exportPolicy != "" {
		if _, err := provider.ParseExportPolicy(c.exportPolicy); err != nil {
			return &usageError{msg: fmt.Sprintf("--export-policy %q: want none or trusted", c.exportPolicy)}
		}
	}
	if c.uriSet {
		if err := refusePINInURI(c.uri); err != nil {
			return err
		}
	}
	return nil
}
