package main

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// openPTY returns the terminal end of a new pseudo-terminal.
func openPTY(t *testing.T) *os.File {
	t.Helper()
	_, tty := ptyPair(t)
	return tty
}

// DER is refused on a terminal before anything else happens (no token is
// opened: the module does not even exist).
func TestBinaryToTerminalRefused(t *testing.T) {
	tty := openPTY(t)
	for _, args := range [][]string{
		{"--module", "/nonexistent.so", "key", "new", "--kek", "a"},
		{"--module", "/nonexistent.so", "encrypt", "--kek", "a", "--der"},
	} {
		var errOut strings.Builder
		code := run(args, strings.NewReader(""), tty, &errOut)
		assert.Equal(t, exitUsage, code, args)
		assert.Contains(t, errOut.String(), "hsmkeys: error: refusing to write binary DER to the terminal\n")
		assert.Contains(t, errOut.String(), "hsmkeys: hint: write to a file with -o FILE, or ask for text with --pem\n")
	}
	// With --pem the command goes on (and fails later, on the missing module).
	var errOut strings.Builder
	code := run([]string{"--module", "/nonexistent.so", "key", "new", "--kek", "a", "--pem"}, strings.NewReader(""), tty, &errOut)
	assert.Equal(t, exitFail, code)
	assert.NotContains(t, errOut.String(), "refusing")
}

// Progress goes to stderr only when stderr is a terminal.
func TestProgressOnlyOnTerminal(t *testing.T) {
	tty := openPTY(t)
	c := &cli{stderr: tty}
	assert.True(t, c.newProgress().on)
	var b strings.Builder
	c = &cli{stderr: &b}
	p := c.newProgress()
	p.show("rewrapped %d/%d", 1, 2)
	p.clear()
	assert.Empty(t, b.String())
}
