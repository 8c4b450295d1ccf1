package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
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

	// describe, when set, receives the flag set of the command instead of
	// running it (see registry.go).
	describe     func(fs *flags)
	path         string         // the command being run: "kek list"
	result       *jsonDoc       // the --json document, written once the command ends
	sig          atomic.Int32   // the signal that interrupted the command, if one did
	prompted     [2]atomic.Bool // the user (0) or SO (1) PIN was typed at the prompt
	term         *termLine      // the progress line on the terminal, if any
	exportPolicy string         // --export-policy: "trusted" (default) or "none"
}

// run is the whole command: main only turns its result into an exit status,
// so that every deferred cleanup (temporary files, provider Close) runs.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	c := &cli{stdin: stdin, stdout: stdout, stderr: stderr}
	c.json = jsonAsked(args)
	c.wrapStreams()
	// SIGINT and SIGTERM cancel the context: commands stop, remove their
	// temporary files and leave earlier outputs untouched; the exit status
	// is then 128 + the signal's number, as a shell reports a process the
	// signal killed (130 for Ctrl-C). A second signal kills the process the
	// usual way.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigc)
	go func() {
		select {
		case s := <-sigc:
			if n, ok := s.(syscall.Signal); ok {
				c.sig.Store(int32(n))
			}
			signal.Stop(sigc)
			cancel()
		case <-ctx.Done():
		}
	}()
	rest, err := c.parseGlobals(args)
	if err != nil {
		return c.fail(err)
	}
	if len(rest) == 0 {
		if c.json {
			return c.fail(&usageError{msg: "no command given"})
		}
		fmt.Fprint(c.stderr, topHelp())
		return exitUsage
	}
	return c.fail(c.dispatch(ctx, commands(), rest))
}

// jsonAsked is whether --json is on the command line before any "--", so
// that even a command line that does not parse gets its JSON document.
func jsonAsked(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "--json", "-json", "--json=true", "-json=true":
			return true
		}
	}
	return false
}

func (c *cli) parseGlobals(args []string) ([]string, error) {
	fs := flag.NewFlagSet("hsmkeys", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.addGlobals(fs, true)
	version := fs.Bool("version", false, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(c.stdout, topHelp())
			return nil, errHelpShown
		}
		return nil, flagError(fs, "", args, err)
	}
	if err := c.noteGlobals(fs); err != nil {
		return nil, err
	}
	if *version {
		// "hsmkeys --version" is "hsmkeys version", flags and all.
		return append([]string{"version"}, fs.Args()...), nil
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
		{name: "version", summary: "the version of hsmkeys and, with --module, of the PKCS#11 library", run: (*cli).cmdVersion},
		{name: "completion", summary: "a completion script for bash, zsh or fish", run: (*cli).cmdCompletion},
		{name: "man", summary: "the manual page, in roff", run: (*cli).cmdMan},
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
			c.path = join(group, name)
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
	hint := fmt.Sprintf("run 'hsmkeys %s' for the list", join("help", group))
	if strings.HasPrefix(name, "-") && group != "" {
		// Global flags between a group and its subcommand: "hsmkeys kek
		// --token x list".
		fs := flag.NewFlagSet(group, flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		c.addGlobals(fs, false)
		if err := fs.Parse(args); err != nil {
			return flagError(fs, group, args, err)
		}
		if err := c.noteGlobals(fs); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			return &usageError{msg: fmt.Sprintf("hsmkeys %s needs a subcommand", group), hint: fmt.Sprintf("run 'hsmkeys %s --help' for its subcommands", group)}
		}
		return c.dispatchIn(ctx, group, cmds, fs.Args())
	}
	names := []string{"help"}
	for _, cmd := range cmds {
		names = append(names, cmd.name)
	}
	if s := suggest(name, names); s != "" {
		hint = fmt.Sprintf("did you mean '%s'? %s", join(join("hsmkeys", group), s), hint)
	}
	return &usageError{msg: fmt.Sprintf("unknown %s %q", where, name), hint: hint}
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
