package main

// The terminal prompts, for real: the hsmkeys binary runs with a
// pseudo-terminal as its controlling terminal, and the test types at it.

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// ptyPair opens a pseudo-terminal: the master (the test's side) and the
// terminal (the program's).
func ptyPair(t *testing.T) (master, tty *os.File) {
	t.Helper()
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { ptmx.Close() })
	var unlock int32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, ptmx.Fd(), syscall.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); e != 0 {
		t.Skipf("unlockpt: %v", e)
	}
	var n uint32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, ptmx.Fd(), syscall.TIOCGPTN, uintptr(unsafe.Pointer(&n))); e != 0 {
		t.Skipf("ptsname: %v", e)
	}
	pts, err := os.OpenFile("/dev/pts/"+strconv.Itoa(int(n)), os.O_RDWR|syscall.O_NOCTTY, 0)
	require.NoError(t, err)
	t.Cleanup(func() { pts.Close() })
	return ptmx, pts
}

// screen collects what the program writes to its terminal, until the
// terminal closes: once the program (and anything it started) has exited,
// reading the master gives what is left, then EIO.
type screen struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{} // a token after each read
	closed  chan struct{} // closed when the terminal is
}

func newScreen(master *os.File) *screen {
	s := &screen{changed: make(chan struct{}, 1), closed: make(chan struct{})}
	go func() {
		defer close(s.closed)
		b := make([]byte, 4096)
		for {
			n, err := master.Read(b)
			s.mu.Lock()
			s.buf.Write(b[:n])
			s.mu.Unlock()
			select {
			case s.changed <- struct{}{}:
			default:
			}
			if err != nil {
				return
			}
		}
	}()
	return s
}

func (s *screen) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// nearDeadline fires shortly before the test's own deadline (go test
// -timeout), so that a wait that never ends fails with what the terminal
// shows instead of a panic. Without a deadline it never fires. No wait here
// has a shorter limit: a busy machine is slow, not wrong.
func nearDeadline(t *testing.T) <-chan time.Time {
	d, ok := t.Deadline()
	if !ok {
		return nil
	}
	left := time.Until(d)
	return time.After(left - min(left/10, 30*time.Second))
}

// waitFor waits until the terminal shows text. It fails if the terminal
// closes (the program exited) without showing it.
func (s *screen) waitFor(t *testing.T, text string) {
	t.Helper()
	expire := nearDeadline(t)
	for !strings.Contains(s.String(), text) {
		select {
		case <-s.changed:
		case <-s.closed:
			if !strings.Contains(s.String(), text) {
				t.Fatalf("the program closed the terminal without showing %q; it shows %q", text, s.String())
			}
		case <-expire:
			t.Fatalf("the test's deadline is near; waited for %q, the terminal shows %q", text, s.String())
		}
	}
}

// finish waits for the program to exit and for everything it wrote to be
// read, and returns what Wait returned.
func (s *screen) finish(t *testing.T, cmd *exec.Cmd) error {
	t.Helper()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	expire := nearDeadline(t)
	var err error
	select {
	case err = <-exited:
	case <-expire:
		_ = cmd.Process.Kill()
		t.Fatalf("the test's deadline is near and %v still runs; the terminal shows %q", cmd.Args, s.String())
	}
	select {
	case <-s.closed:
	case <-expire:
		t.Fatalf("the test's deadline is near and the terminal is still open; it shows %q", s.String())
	}
	return err
}

type promptEnv struct {
	bin, dir string
	env      []string
	userPIN  string
}

// setupPromptToken builds hsmkeys and makes a SoftHSM token for it.
func setupPromptToken(t *testing.T) promptEnv {
	t.Helper()
	module := softhsmModule()
	if module == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set and SoftHSM is missing")
		}
		t.Skip("SoftHSM not installed")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "hsmkeys")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "tokens"), 0o700))
	conf := filepath.Join(dir, "softhsm2.conf")
	require.NoError(t, os.WriteFile(conf, []byte("directories.tokendir = "+filepath.Join(dir, "tokens")+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600))
	pe := promptEnv{bin: bin, dir: dir, userPIN: "prompt-user-4711"}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "user.pin"), []byte(pe.userPIN+"\n"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "so.pin"), []byte("prompt-so-4712\n"), 0o600))
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HSMKEYS_") && !strings.HasPrefix(kv, "SOFTHSM2_CONF=") {
			env = append(env, kv)
		}
	}
	pe.env = append(env, "SOFTHSM2_CONF="+conf, "HSMKEYS_MODULE="+module, "HSMKEYS_TOKEN=prompt")
	cmd := exec.Command(bin, "init-token", "--label", "prompt", "--so-pin-file", filepath.Join(dir, "so.pin"), "--pin-file", filepath.Join(dir, "user.pin"))
	cmd.Env = pe.env
	out, err = cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	return pe
}

// startOnTerminal runs the binary with the terminal as its stdin, stdout,
// stderr and controlling terminal.
func startOnTerminal(t *testing.T, pe promptEnv, env []string, args ...string) (*exec.Cmd, *os.File, *screen) {
	t.Helper()
	master, tty := ptyPair(t)
	cmd := exec.Command(pe.bin, args...)
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill() }) // if the test fails before the end
	// Only the program holds the terminal now: when it exits, the
	// terminal closes and the screen has all it wrote.
	require.NoError(t, tty.Close())
	return cmd, master, newScreen(master)
}

// echoing says whether the terminal of master echoes what is typed (TCGETS
// on the master reads the terminal's settings).
func echoing(t *testing.T, master *os.File) bool {
	t.Helper()
	rc, err := master.SyscallConn()
	require.NoError(t, err)
	var tio *unix.Termios
	var ierr error
	require.NoError(t, rc.Control(func(fd uintptr) { tio, ierr = unix.IoctlGetTermios(int(fd), unix.TCGETS) }))
	require.NoError(t, ierr)
	return tio.Lflag&unix.ECHO != 0
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// The prompt is written only once echo is off, so a PIN typed as soon as
// the prompt shows is never echoed; afterwards the terminal echoes again.
// The prompt writer itself types the PIN: deterministic, on any machine.
func TestReadSecretEchoOffBeforePrompt(t *testing.T) {
	master, tty := ptyPair(t)
	require.True(t, echoing(t, master), "a new terminal echoes")
	var atPrompt []bool
	prompt := writerFunc(func(b []byte) (int, error) {
		if strings.Contains(string(b), "PIN: ") {
			atPrompt = append(atPrompt, echoing(t, master))
			_, err := master.Write([]byte("typed-4711\r"))
			require.NoError(t, err)
		}
		return len(b), nil
	})
	pin, err := readSecret(context.Background(), tty, prompt, "PIN: ")
	require.NoError(t, err)
	assert.Equal(t, "typed-4711", string(pin))
	assert.Equal(t, []bool{false}, atPrompt, "echo is off when the prompt is written")
	assert.True(t, echoing(t, master), "echo is back afterwards")
	require.NoError(t, tty.Close())
	scr := newScreen(master)
	<-scr.closed
	assert.NotContains(t, scr.String(), "typed-4711")
}

func TestPINPromptOnTerminal(t *testing.T) {
	pe := setupPromptToken(t)
	cmd, master, scr := startOnTerminal(t, pe, pe.env, "selftest")
	scr.waitFor(t, "PIN for token \"prompt\": ")
	// What the user types once the prompt shows is never echoed.
	require.False(t, echoing(t, master), "echo is off when the prompt appears")
	_, err := master.Write([]byte(pe.userPIN + "\r"))
	require.NoError(t, err)
	require.NoError(t, scr.finish(t, cmd), "%s", scr.String())
	assert.Contains(t, scr.String(), "selftest passed")
	assert.NotContains(t, scr.String(), pe.userPIN, "the PIN is not echoed")

	// A wrong PIN typed at the prompt: the PIN error and its hint, exit 1.
	cmd, master, scr = startOnTerminal(t, pe, pe.env, "selftest")
	scr.waitFor(t, "PIN for token \"prompt\": ")
	_, err = master.Write([]byte("not-the-pin\r"))
	require.NoError(t, err)
	err = scr.finish(t, cmd)
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, 1, ee.ExitCode())
	assert.Contains(t, scr.String(), "hsmkeys: hint:")
	assert.Contains(t, scr.String(), "pin rejected")
	assert.NotContains(t, scr.String(), "not-the-pin")
}

func TestDestroyAsksOnTerminal(t *testing.T) {
	pe := setupPromptToken(t)
	env := append(pe.env, "HSMKEYS_PIN_FILE="+filepath.Join(pe.dir, "user.pin"), "HSMKEYS_SO_PIN_FILE="+filepath.Join(pe.dir, "so.pin"))
	create := exec.Command(pe.bin, "kek", "create", "--label", "doomed")
	create.Env = env
	out, err := create.CombinedOutput()
	require.NoError(t, err, "%s", out)
	list := func() string {
		c := exec.Command(pe.bin, "kek", "list")
		c.Env = env
		out, err := c.CombinedOutput()
		require.NoError(t, err, "%s", out)
		return string(out)
	}

	// "n" (or anything but y/yes) keeps the KEK.
	cmd, master, scr := startOnTerminal(t, pe, env, "kek", "destroy", "--label", "doomed")
	scr.waitFor(t, "[y/N] ")
	_, err = master.Write([]byte("n\r"))
	require.NoError(t, err)
	require.Error(t, scr.finish(t, cmd), "declining is not success")
	assert.Contains(t, list(), "doomed")

	// "y" destroys it.
	cmd, master, scr = startOnTerminal(t, pe, env, "kek", "destroy", "--label", "doomed")
	scr.waitFor(t, "[y/N] ")
	_, err = master.Write([]byte("y\r"))
	require.NoError(t, err)
	require.NoError(t, scr.finish(t, cmd), "%s", scr.String())
	assert.NotContains(t, list(), "doomed")
}
