package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/hsmkeys/hsmkeys/provider"
)

// exit codes
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

// cli is one invocation: its streams and the global flags.
type cli struct {
	stdin          io.Reader
	stdout, stderr io.Writer

	module, token, uri          string
	moduleSet, tokenSet, uriSet bool // given as flags, not from the environment
	json                        bool
	pinFile, soPINFile          string
	initArgs                    string // C_Initialize's pReserved, for modules such as NSS softoken
	exportPolicy                string // --export-policy: "trusted" (default) or "none"
}

// run is the whole command: main only turns its result into an exit status,
// so that every deferred cleanup (temporary files, provider Close) runs.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	c := &cli{stdin: stdin, stdout: stdout, stderr: stderr}
	rest, err := c.parseGlobals(args)
	if err != nil {
		return c.fail(err)
	}
	if len(rest) == 0 {
		fmt.Fprint(stderr, topHelp())
		return exitUsage
	}
	// SIGINT and SIGTERM cancel the context: commands stop, remove their
	// temporary files and leave earlier outputs untouched. A second signal
	// kills the process the usual way.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop()
	}()
	return c.fail(c.dispatch(ctx, commands(), rest))
}

func (c *cli) parseGlobals(args []string) ([]string, error) {
	fs := flag.NewFlagSet("hsmkeys", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&c.module, "module", os.Getenv("HSMKEYS_MODULE"), "")
	fs.StringVar(&c.token, "token", os.Getenv("HSMKEYS_TOKEN"), "")
	fs.StringVar(&c.uri, "uri", os.Getenv("HSMKEYS_URI"), "")
	fs.StringVar(&c.initArgs, "init-args", os.Getenv("HSMKEYS_INIT_ARGS"), "")
	fs.StringVar(&c.exportPolicy, "export-policy", os.Getenv("HSMKEYS_EXPORT_POLICY"), "")
	fs.BoolVar(&c.json, "json", false, "")
	fs.StringVar(&c.pinFile, "pin-file", "", "")
	fs.StringVar(&c.soPINFile, "so-pin-file", "", "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(c.stdout, topHelp())
			return nil, errHelpShown
		}
		return nil, &usageError{msg: err.Error()}
	}
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
	if c.exportPolicy != "" {
		if _, err := provider.ParseExportPolicy(c.exportPolicy); err != nil {
			return nil, &usageError{msg: fmt.Sprintf("--export-policy %q: want none or trusted", c.exportPolicy)}
		}
	}
	if c.tokenSet && c.uriSet {
		return nil, &usageError{msg: "--token and --uri both name the token; give one of them"}
	}
	if c.uriSet {
		if err := refusePINInURI(c.uri); err != nil {
			return nil, err
		}
	}
	return fs.Args(), nil
}

// command is a command or a group of subcommands.
type command struct {
	name    string
	summary string
	run     func(c *cli, ctx context.Context, args []string) error
	sub     []*command
}

func commands() []*command {
	return []*command{
		{name: "tokens", summary: "slots and tokens: label, serial, model, flags", run: (*cli).cmdTokens},
		{name: "doctor", summary: "can this token keep hsmkeys' promises?", run: (*cli).cmdDoctor},
		{name: "kek", summary: "key-encryption keys: create, import, import-public, list, destroy", sub: []*command{
			{name: "create", summary: "a new KEK, or a new version of one", run: (*cli).cmdKEKCreate},
			{name: "import", summary: "an AES KEK from an administrator-supplied value", run: (*cli).cmdKEKImport},
			{name: "import-public", summary: "another party's RSA public key, trusted for wrapping", run: (*cli).cmdKEKImportPublic},
			{name: "list", summary: "the KEKs on the token and their problems", run: (*cli).cmdKEKList},
			{name: "destroy", summary: "destroy one version of a KEK, or all of them", run: (*cli).cmdKEKDestroy},
		}},
		{name: "key", summary: "session keys: new, inspect, rewrap", sub: []*command{
			{name: "new", summary: "a session key, exported wrapped under KEKs", run: (*cli).cmdKeyNew},
			{name: "inspect", summary: "recipients and algorithms of an exported key or a message", run: (*cli).cmdKeyInspect},
			{name: "rewrap", summary: "wrap exported keys under other KEKs, in place", run: (*cli).cmdKeyRewrap},
		}},
		{name: "encrypt", summary: "encrypt under a fresh session key, wrapped for KEKs", run: (*cli).cmdEncrypt},
		{name: "decrypt", summary: "decrypt a message made by encrypt (or openssl cms)", run: (*cli).cmdDecrypt},
		{name: "bench", summary: "operations per second and latency on this token", run: (*cli).cmdBench},
		{name: "selftest", summary: "generate, seal, open, tamper, destroy a session key", run: (*cli).cmdSelftest},
		{name: "init-token", summary: "initialise a token (SoftHSM and test tokens) from PIN files", run: (*cli).cmdInitToken},
	}
}

// dispatch finds the command named by args[0] (and a subcommand) and runs it.
func (c *cli) dispatch(ctx context.Context, cmds []*command, args []string) error {
	return c.dispatchIn(ctx, "", cmds, args)
}

func (c *cli) dispatchIn(ctx context.Context, group string, cmds []*command, args []string) error {
	name := args[0]
	switch name {
	case "help", "-h", "-help", "--help":
		return c.cmdHelp(group, cmds, args[1:])
	}
	for _, cmd := range cmds {
		if cmd.name != name {
			continue
		}
		if cmd.sub == nil {
			return cmd.run(c, ctx, args[1:])
		}
		path := join(group, name)
		if len(args) == 1 {
			return &usageError{msg: fmt.Sprintf("%s needs a subcommand", "hsmkeys "+path), hint: fmt.Sprintf("run 'hsmkeys %s --help' for its subcommands", path)}
		}
		return c.dispatchIn(ctx, path, cmd.sub, args[1:])
	}
	where := "command"
	if group != "" {
		where = group + " subcommand"
	}
	return &usageError{msg: fmt.Sprintf("unknown %s %q", where, name), hint: fmt.Sprintf("run 'hsmkeys %s' for the list", join("help", group))}
}

// cmdHelp prints the help of the group or of the command named in args.
func (c *cli) cmdHelp(group string, cmds []*command, args []string) error {
	if len(args) == 0 {
		if group == "" {
			fmt.Fprint(c.stdout, topHelp())
		} else {
			fmt.Fprint(c.stdout, groupHelp(group, cmds))
		}
		return errHelpShown
	}
	// "hsmkeys help kek create" is "hsmkeys kek create --help".
	return c.dispatchIn(context.Background(), group, cmds, append(args[:len(args):len(args)], "--help"))
}

func join(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + " " + b
}
