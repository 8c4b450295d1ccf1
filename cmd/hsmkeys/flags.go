package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// spec is what a command's --help says besides its flags.
type spec struct {
	path     string // "kek create"
	usage    string // after "hsmkeys "
	about    string
	examples string
}

// flags is a command's flag set, with its help.
type flags struct {
	*flag.FlagSet
	spec spec
	// pin and soPIN: the command reads the user PIN, the SO PIN (its help
	// lists --pin-file, --so-pin-file among its own flags).
	pin, soPIN bool
}

// newFlags makes the flag set of a command. Every command accepts the
// global flags after its name as well as before it.
func (c *cli) newFlags(s spec) *flags {
	fs := flag.NewFlagSet(s.path, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.addGlobals(fs, false)
	return &flags{FlagSet: fs, spec: s}
}

// pinFlags says the command reads the user PIN and, with so, the Security
// Officer PIN: --pin-file and --so-pin-file (global flags) are shown among
// its flags.
func (c *cli) pinFlags(fs *flags, so bool) {
	fs.pin = true
	fs.soPIN = fs.soPIN || so
}

// parse parses args, letting flags and operands come in any order ("--"
// ends the flags). --help prints the help and gives errHelpShown.
//
// In describe mode (help, completion, the man page) nothing is parsed: the
// flag set is handed over and the command stops there, before any work.
func (c *cli) parse(fs *flags, args []string) ([]string, error) {
	if c.describe != nil {
		c.describe(fs)
		return nil, errDescribed
	}
	operands, err := c.parseFlags(fs, args)
	if err != nil {
		return nil, err
	}
	if err := c.noteGlobals(fs.FlagSet); err != nil {
		return nil, err
	}
	return operands, nil
}

func (c *cli) parseFlags(fs *flags, all []string) ([]string, error) {
	var operands []string
	args := all
	for {
		err := fs.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(c.stdout, fs.help())
			return nil, errHelpShown
		}
		if err != nil {
			return nil, flagError(fs.FlagSet, fs.spec.path, all, err)
		}
		rest := fs.Args()
		consumed := len(args) - len(rest)
		if consumed > 0 && args[consumed-1] == "--" {
			return append(operands, rest...), nil
		}
		if len(rest) == 0 {
			return operands, nil
		}
		operands = append(operands, rest[0])
		args = rest[1:]
	}
}

// noOperands refuses operands for commands that take none.
func noOperands(fs *flags, operands []string) error {
	if len(operands) > 0 {
		return usagef(fs.spec.path, "unexpected argument %q", operands[0])
	}
	return nil
}

func (fs *flags) help() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage:\n  hsmkeys [global flags] %s\n\n", fs.spec.usage)
	b.WriteString(strings.TrimSpace(fs.spec.about))
	b.WriteString("\n\nFlags:\n")
	for _, d := range describeFlags(fs) {
		if !d.global {
			fmt.Fprintf(&b, "  %-24s %s\n", d.synopsis(), d.usageWithDefault(true))
		}
	}
	b.WriteString("  --help                   this help\n")
	if fs.spec.examples != "" {
		b.WriteString("\nExamples:\n")
		for _, l := range strings.Split(strings.TrimSpace(fs.spec.examples), "\n") {
			b.WriteString("  " + strings.TrimSpace(l) + "\n")
		}
	}
	var gs []string
	for _, g := range globalFlags {
		if (g.name == "pin-file" && fs.pin) || (g.name == "so-pin-file" && fs.soPIN) {
			continue
		}
		gs = append(gs, strings.TrimSpace(dashed(g.name)+" "+g.arg))
	}
	fmt.Fprintf(&b, "\nGlobal flags, before or after the command (defaults in 'hsmkeys help'):\n  %s\n", strings.Join(gs, ", "))
	return b.String()
}

func isBool(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// listFlag is a flag that may be repeated: --kek a --kek b.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	if v == "" {
		return errors.New("empty value")
	}
	*l = append(*l, v)
	return nil
}

// contextFlag collects --context k=v pairs.
type contextFlag map[string]string

func (m contextFlag) String() string { return "" }

func (m contextFlag) Set(v string) error { return addContextPair(m, v) }

// armorFlags adds --der and --pem; armor reports the choice (default DER).
type armorFlags struct{ der, pem bool }

// add registers the flags; the default is DER, or with followInput the
// input's own armour.
func (a *armorFlags) add(fs *flags, followInput bool) {
	der := "write binary DER (the default)"
	if followInput {
		der = "write binary DER (default: as the file was)"
	}
	fs.BoolVar(&a.der, "der", false, der)
	fs.BoolVar(&a.pem, "pem", false, "write PEM (-----BEGIN CMS-----), safe for terminals and mail")
}

func (a *armorFlags) check(fs *flags) error {
	if a.der && a.pem {
		return usagef(fs.spec.path, "--der and --pem exclude each other")
	}
	return nil
}
