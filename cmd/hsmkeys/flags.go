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
}

// newFlags makes the flag set of a command. Every command accepts --json
// after its name as well as before it.
func (c *cli) newFlags(s spec) *flags {
	fs := flag.NewFlagSet(s.path, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.BoolVar(&c.json, "json", c.json, "one JSON document on stdout")
	return &flags{FlagSet: fs, spec: s}
}

// pinFlags adds --pin-file (user) and, with so, --so-pin-file. The global
// flags of the same names are their defaults.
func (c *cli) pinFlags(fs *flags, so bool) {
	fs.StringVar(&c.pinFile, "pin-file", c.pinFile, "read the user PIN from `FILE` (first line)")
	if so {
		fs.StringVar(&c.soPINFile, "so-pin-file", c.soPINFile, "read the Security Officer PIN from `FILE` (first line)")
	}
}

// parse parses args, letting flags and operands come in any order ("--"
// ends the flags). --help prints the help and gives errHelpShown.
func (c *cli) parse(fs *flags, args []string) ([]string, error) {
	var operands []string
	for {
		err := fs.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(c.stdout, fs.help())
			return nil, errHelpShown
		}
		if err != nil {
			return nil, usagef(fs.spec.path, "%v", err)
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
	fs.VisitAll(func(f *flag.Flag) {
		arg, usage := flag.UnquoteUsage(f)
		name := "--" + f.Name
		if len(f.Name) == 1 {
			name = "-" + f.Name
		}
		if arg != "" && !isBool(f) {
			name += " " + arg
		}
		fmt.Fprintf(&b, "  %-24s %s\n", name, usage)
	})
	b.WriteString("  --help                   this help\n")
	if fs.spec.examples != "" {
		b.WriteString("\nExamples:\n")
		for _, l := range strings.Split(strings.TrimSpace(fs.spec.examples), "\n") {
			b.WriteString("  " + strings.TrimSpace(l) + "\n")
		}
	}
	b.WriteString("\nGlobal flags (before the command): --module PATH, --token LABEL | --uri PKCS11-URI, --json.\n")
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
