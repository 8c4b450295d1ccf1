package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/term"

	"github.com/hsmkeys/hsmkeys/provider"
)

func isTerminal(x any) bool {
	if l, ok := x.(*lineEnder); ok {
		x = l.w
	}
	f, ok := x.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func (c *cli) stdinIsTerminal() bool  { return isTerminal(c.stdin) }
func (c *cli) stdoutIsTerminal() bool { return isTerminal(c.stdout) }
func (c *cli) stderrIsTerminal() bool { return isTerminal(c.stderr) }

// canPrompt reports whether the process has a controlling terminal to ask
// on, whatever stdin is: "hsmkeys decrypt < file.cms" asks there, as age,
// ssh and gpg do.
func canPrompt() bool {
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	ok := term.IsTerminal(int(tty.Fd()))
	tty.Close()
	return ok
}

// promptPIN asks for a PIN on the controlling terminal, without echo. It
// reads /dev/tty rather than stdin so that data piped to stdin is not taken
// for a PIN. An interrupt restores the terminal's echo before returning.
// A PIN typed there and refused gets a hint about typing, not about files.
func (c *cli) promptPIN(what string) provider.PINPrompt {
	who := 0
	if strings.HasPrefix(what, "SO") {
		who = 1
	}
	return func(ctx context.Context, t provider.TokenInfo) ([]byte, error) {
		tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("cannot open the terminal to ask for the %s: %w", what, err)
		}
		defer tty.Close()
		c.endLine()
		c.prompted[who].Store(true)
		return readSecret(ctx, tty, tty, fmt.Sprintf("hsmkeys: %s for token %q: ", what, t.Label))
	}
}

// readSecret writes prompt to w and reads a line from the terminal tty
// without echo, then restores the terminal as it was. Echo goes off before
// the prompt is written: what the user types once the prompt shows must
// not appear, and term.ReadPassword alone turns echo off only after a
// prompt written before it is already on the screen.
func readSecret(ctx context.Context, tty *os.File, w io.Writer, prompt string) ([]byte, error) {
	fd := int(tty.Fd()) // Fd puts the descriptor in blocking mode, as ReadPassword needs
	state, err := term.GetState(fd)
	if err != nil {
		return nil, err
	}
	if err := echoOff(fd); err != nil {
		return nil, err
	}
	fmt.Fprint(w, prompt)
	type result struct {
		pin []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		pin, err := term.ReadPassword(fd)
		done <- result{pin, err}
	}()
	select {
	case r := <-done:
		_ = term.Restore(fd, state)
		fmt.Fprintln(w)
		return r.pin, r.err
	case <-ctx.Done():
		_ = term.Restore(fd, state)
		fmt.Fprintln(w)
		return nil, ctx.Err()
	}
}

// confirm asks a yes/no question on the terminal; only "y" or "yes" is yes.
func confirm(ctx context.Context, question string) (bool, error) {
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil {
		return false, fmt.Errorf("cannot open the terminal to ask: %w", err)
	}
	defer tty.Close()
	fmt.Fprintf(tty, "hsmkeys: %s [y/N] ", question)
	answer := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(tty).ReadString('\n')
		answer <- line
	}()
	select {
	case a := <-answer:
		a = strings.ToLower(strings.TrimSpace(a))
		return a == "y" || a == "yes", nil
	case <-ctx.Done():
		fmt.Fprintln(tty)
		return false, ctx.Err()
	}
}

// ctxReader makes reads from a pipe or terminal (stdin) give up when ctx is
// done: a read blocked in the kernel cannot be interrupted, so it runs in
// a goroutine that is abandoned on cancel (the process is about to exit).
type ctxReader struct {
	ctx  context.Context
	data chan []byte
	errc chan error
	buf  []byte
	err  error
}

func newCtxReader(ctx context.Context, r io.Reader) *ctxReader {
	cr := &ctxReader{ctx: ctx, data: make(chan []byte), errc: make(chan error, 1)}
	go func() {
		for {
			b := make([]byte, 64<<10)
			n, err := r.Read(b)
			if n > 0 {
				select {
				case cr.data <- b[:n]:
				case <-ctx.Done():
					return
				}
			}
			if err != nil {
				cr.errc <- err
				return
			}
		}
	}()
	return cr
}

func (r *ctxReader) Read(p []byte) (int, error) {
	if len(r.buf) == 0 && r.err == nil {
		select {
		case r.buf = <-r.data:
		case r.err = <-r.errc:
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
	if len(r.buf) > 0 {
		n := copy(p, r.buf)
		r.buf = r.buf[n:]
		return n, nil
	}
	return 0, r.err
}
