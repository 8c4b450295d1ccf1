package main

import (
	"errors"
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSuggest(t *testing.T) {
	cmds := []string{"tokens", "doctor", "kek", "key", "encrypt", "decrypt", "bench", "selftest", "init-token", "help"}
	for typed, want := range map[string]string{
		"lst": "list", "jsn": "json", "lable": "label", "tokns": "tokens", "ecnrypt": "encrypt",
		"lab": "label", "frobnicate": "", "x": "", "pin": "pin-file",
	} {
		cands := append([]string{"list", "json", "label", "pin-file", "so-pin-file"}, cmds...)
		assert.Equal(t, want, suggest(typed, cands), typed)
	}
	assert.Equal(t, 1, editDistance("ab", "ba"), "a swap is one edit")
	assert.Equal(t, 3, editDistance("", "abc"))
}

// A flag error names the flag as typed, and suggests a near one.
func TestFlagErrorAsTyped(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.Bool("json", false, "")
	fs.Int("j", 1, "")
	for _, tc := range []struct {
		args      []string
		msg, hint string
	}{
		{[]string{"--jsn"}, "flag provided but not defined: --jsn", "did you mean --json?"},
		{[]string{"-jsn"}, "flag provided but not defined: -jsn", "did you mean --json?"},
		{[]string{"--jsn=true"}, "flag provided but not defined: --jsn", "did you mean --json?"},
		{[]string{"-j"}, "flag needs an argument: -j", "run 'hsmkeys x --help'"},
		{[]string{"--j", "many"}, `invalid value "many" for flag --j: parse error`, "run 'hsmkeys x --help'"},
	} {
		fs := flag.NewFlagSet("x", flag.ContinueOnError)
		fs.Bool("json", false, "")
		fs.Int("j", 1, "")
		fs.SetOutput(&strings.Builder{})
		err := flagError(fs, "x", tc.args, fs.Parse(tc.args))
		var ue *usageError
		require.True(t, errors.As(err, &ue), tc.args)
		assert.Equal(t, tc.msg, ue.msg, tc.args)
		assert.Contains(t, ue.hint, tc.hint, tc.args)
	}
}

// Every command can be described without running (and so without a
// token): the registry panics otherwise.
func TestEveryCommandDescribed(t *testing.T) {
	var paths []string
	for _, cd := range allCommands() {
		paths = append(paths, cd.path)
		assert.NotEmpty(t, cd.spec.examples, cd.path)
		for _, f := range cd.flags {
			assert.NotEmpty(t, f.usage, "%s %s", cd.path, f.name)
		}
	}
	assert.Contains(t, paths, "kek create")
	assert.Contains(t, paths, "version")
}

func TestProgressText(t *testing.T) {
	assert.Equal(t, "hsmkeys: decrypting  50%  512.0 MiB of 1.0 GiB  256.0 MiB/s  ETA 0:02",
		progressText("decrypting", 512<<20, 1<<30, 2*time.Second))
	assert.Equal(t, "hsmkeys: encrypting  3.0 MiB  1.5 MiB/s", progressText("encrypting", 3<<20, -1, 2*time.Second))
	assert.Equal(t, "1:01:01", clock(3661*time.Second))
}

// Decrypt's two passes are named: the first half of the reads is the tag
// check, the second the decryption.
func TestProgressNamesPasses(t *testing.T) {
	var screen strings.Builder
	p := &progress{t: &termLine{w: &screen}, on: true, start: time.Now()}
	r := &countingReader{total: 200, passes: []string{"verifying", "decrypting"}, p: p}
	r.report(50)
	assert.Contains(t, screen.String(), "hsmkeys: verifying  50%")
	p.last = time.Time{} // the next line is due
	r.report(100)
	assert.Contains(t, screen.String(), "hsmkeys: decrypting  50%")
	p.finish("decrypted", 100)
	assert.Contains(t, screen.String(), "\r\033[Khsmkeys: decrypted 100 B in ", "the progress line is cleared first")
	assert.True(t, strings.HasSuffix(screen.String(), "/s)\n"), "the summary is a line of its own: %q", screen.String())
}

// Output to the terminal never lands on the progress line: the line is
// cleared first, and while output stands mid-line no progress is drawn.
func TestOutputEndsProgressLine(t *testing.T) {
	var screen strings.Builder
	tl := &termLine{w: &screen}
	out := &lineEnder{t: tl, w: &screen}
	tl.draw("hsmkeys: encrypting  1.0 MiB")
	_, _ = out.Write([]byte("-----BEGIN CMS-----"))
	assert.Equal(t, "\r\033[Khsmkeys: encrypting  1.0 MiB\r\033[K-----BEGIN CMS-----", screen.String())
	tl.draw("hsmkeys: encrypting  2.0 MiB") // held back: the output is mid-line
	assert.NotContains(t, screen.String(), "2.0 MiB")
	_, _ = out.Write([]byte("\nMIIB\n"))
	tl.draw("hsmkeys: encrypting  3.0 MiB")
	assert.True(t, strings.HasSuffix(screen.String(), "MIIB\n\r\033[Khsmkeys: encrypting  3.0 MiB"))
	tl.end()
	assert.True(t, strings.HasSuffix(screen.String(), "3.0 MiB\r\033[K"))
}

func TestProgressFiles(t *testing.T) {
	var screen strings.Builder
	p := &progress{t: &termLine{w: &screen}, on: true, start: time.Now().Add(-time.Second)}
	p.files("rewrapped", 3, 10)
	assert.Regexp(t, `^\r\x1b\[Khsmkeys: rewrapped 3 of 10 files  30%  [0-9.]+ files/s  ETA [0-9]+:[0-9]{2}$`, screen.String())
}
