package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// The command definitions are the code: each command builds its flag set
// and calls c.parse first thing. In describe mode parse hands that flag set
// over and stops the command (errDescribed) before it does anything else, so
// help, completion, the man page and the README table all read the flags
// each command really accepts.

// errDescribed stops a command run in describe mode.
var errDescribed = errors.New("described")

// cmdDoc is one runnable command with its flags.
type cmdDoc struct {
	path    string // "kek create"
	summary string
	spec    spec
	flags   []flagDoc
}

// flagDoc is one flag as help, completion and the man page show it.
type flagDoc struct {
	name, arg, usage string
	def              string // the default, in words; "" when it is the zero value
	bool             bool
	global           bool   // a global flag not specific to the command
	here             string // for a default that depends on the machine: its value here
}

// dynamicDefaults describe defaults that depend on the machine, so that the
// man page and README stay the same wherever they are generated.
var dynamicDefaults = map[string]string{
	"bench workers": "the number of usable CPUs",
}

// describeCommand builds the flag set of the command at path without
// running it.
func describeCommand(cmd *command, path string) cmdDoc {
	var got *flags
	c := &cli{describe: func(fs *flags) { got = fs }}
	err := cmd.run(c, context.Background(), nil)
	if !errors.Is(err, errDescribed) || got == nil {
		panic(fmt.Sprintf("command %q does not call c.parse first (%v)", path, err))
	}
	return cmdDoc{path: path, summary: cmd.summary, spec: got.spec, flags: describeFlags(got)}
}

// allCommands lists every runnable command, in the order of the help.
func allCommands() []cmdDoc {
	var out []cmdDoc
	for _, cmd := range commands() {
		if cmd.sub == nil {
			if cmd.run != nil {
				out = append(out, describeCommand(cmd, cmd.name))
			}
			continue
		}
		for _, sub := range cmd.sub {
			out = append(out, describeCommand(sub, cmd.name+" "+sub.name))
		}
	}
	return out
}

func describeFlags(fs *flags) []flagDoc {
	var out []flagDoc
	fs.VisitAll(func(f *flag.Flag) {
		arg, usage := flag.UnquoteUsage(f)
		d := flagDoc{name: f.Name, usage: usage, bool: isBool(f)}
		if !d.bool {
			d.arg = arg
		}
		if d.bool && f.DefValue != "false" || !d.bool && f.DefValue != "" && f.DefValue != "0" && f.DefValue != "[]" {
			d.def = f.DefValue
		}
		if words, ok := dynamicDefaults[fs.spec.path+" "+f.Name]; ok {
			d.def, d.here = words, f.DefValue
		}
		for _, g := range globalFlags {
			if g.name == f.Name {
				d.global = !(f.Name == "pin-file" && fs.pin || f.Name == "so-pin-file" && fs.soPIN)
				d.def, d.arg, d.usage = g.def, g.arg, g.usage
			}
		}
		out = append(out, d)
	})
	return out
}

// dashed is the flag as typed: -x for one letter, --name otherwise.
func dashed(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

func (d flagDoc) synopsis() string {
	if d.arg == "" {
		return dashed(d.name)
	}
	return dashed(d.name) + " " + d.arg
}

// usageWithDefault is the flag's help with its default, unless the help
// says it already (the usage of --der names its own default). With here, a
// default that depends on the machine is given with its value on this one.
func (d flagDoc) usageWithDefault(here bool) string {
	def := d.def
	if here && d.here != "" {
		def += ", " + d.here + " here"
	}
	if def == "" || def == "false" || strings.Contains(d.usage, "default") {
		return d.usage
	}
	return d.usage + " (default: " + def + ")"
}

func globalHelp() string {
	var b strings.Builder
	for _, g := range globalFlags {
		syn := dashed(g.name)
		if g.arg != "" {
			syn += " " + g.arg
		}
		usage := g.usage
		if g.def != "false" {
			usage += " (default: " + g.def + ")"
		}
		fmt.Fprintf(&b, "  %-24s %s\n", syn, usage)
	}
	return b.String()
}

// The flag package's messages name every flag with one dash
// ("flag provided but not defined: -jsn"); these find the name so that the
// message can show the flag as the user typed it.
var flagMsg = []*regexp.Regexp{
	regexp.MustCompile(`^(flag provided but not defined: )-(.+)$`),
	regexp.MustCompile(`^(flag needs an argument: )-(.+)$`),
	regexp.MustCompile(`^(invalid value ".*" for flag )-([^:]+)(: .*)$`),
	regexp.MustCompile(`^(invalid boolean value ".*" for )-([^:]+)(: .*)$`),
}

// flagError turns a flag package error into a usage error that echoes the
// flag as typed in args and, for an unknown flag, suggests a near one.
func flagError(fs *flag.FlagSet, path string, args []string, err error) error {
	msg := err.Error()
	hint := fmt.Sprintf("run 'hsmkeys %s' for usage and examples", join(path, "--help"))
	if path == "" {
		hint = "run 'hsmkeys help' for usage"
	}
	for i, re := range flagMsg {
		m := re.FindStringSubmatch(msg)
		if m == nil {
			continue
		}
		name := m[2]
		msg = m[1] + typedFlag(args, name)
		if len(m) > 3 {
			msg += m[3]
		}
		if i == 0 {
			var names []string
			fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
			names = append(names, "help")
			if s := suggest(name, names); s != "" {
				hint = fmt.Sprintf("did you mean %s? %s", dashed(s), hint)
			}
		}
		break
	}
	return &usageError{msg: msg, hint: hint}
}

// typedFlag is how the flag name appears in args: "--jsn" or "-jsn".
func typedFlag(args []string, name string) string {
	for _, a := range args {
		if a == "--" {
			break
		}
		if !strings.HasPrefix(a, "-") {
			continue
		}
		dashes := "-"
		s := a[1:]
		if strings.HasPrefix(s, "-") {
			dashes, s = "--", s[1:]
		}
		s, _, _ = strings.Cut(s, "=")
		if s == name {
			return dashes + name
		}
	}
	return dashed(name)
}

// suggest is the candidate nearest to typed, if near enough to be a typo
// or an abbreviation: "lst" → "list", "jsn" → "json", "lab" → "label".
func suggest(typed string, candidates []string) string {
	best, bestD := "", 1<<30
	var prefixed []string
	for _, c := range candidates {
		if c == typed {
			continue
		}
		if len(typed) >= 2 && strings.HasPrefix(c, typed) {
			prefixed = append(prefixed, c)
		}
		if d := editDistance(typed, c); d < bestD {
			best, bestD = c, d
		}
	}
	limit := max(1, min(len(typed), len(best))/3)
	if bestD <= limit {
		return best
	}
	if len(prefixed) > 0 {
		sort.Strings(prefixed)
		return prefixed[0]
	}
	return ""
}

// editDistance is the Damerau-Levenshtein distance (optimal string
// alignment: an adjacent swap counts one, as typists make them).
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	d := make([][]int, len(ra)+1)
	for i := range d {
		d[i] = make([]int, len(rb)+1)
		d[i][0] = i
	}
	for j := range rb {
		d[0][j+1] = j + 1
	}
	for i := 1; i <= len(ra); i++ {
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(ra)][len(rb)]
}
