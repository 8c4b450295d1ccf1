package main

// The terminal prompts, for real: the hsmkeys binary runs with a
// pseudo-terminal as its controlling terminal, and the test types at it.

import (
	"bytes"
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

// screen collects what the program writes to its terminal.
type screen struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *screen) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func (s *screen) waitFor(t *testing.T, text string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(s.String(), text) {
		if time.Now().After(deadline) {
			t.Fatalf("waited for %q; the terminal shows %q", text, s.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
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
	scr := &screen{}
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := master.Read(b)
			scr.mu.Lock()
			scr.buf.Write(b[:n])
			scr.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return cmd, master, scr
}

func TestPINPromptOnTerminal(t *testing.T) {
	pe := setupPromptToken(t)
	cmd, master, scr := startOnTerminal(t, pe, pe.env, "selftest")
	scr.waitFor(t, "PIN for token \"prompt\": ")
	_, err := master.Write([]byte(pe.userPIN + "\r"))
	require.NoError(t, err)
	require.NoError(t, cmd.Wait(), "%s", scr.String())
	time.Sleep(50 * time.Millisecond)
	assert.Contains(t, scr.String(), "selftest passed")
	assert.NotContains(t, scr.String(), pe.userPIN, "the PIN is not echoed")

	// A wrong PIN typed at the prompt: the PIN error and its hint, exit 1.
	cmd, master, scr = startOnTerminal(t, pe, pe.env, "selftest")
	scr.waitFor(t, "PIN for token \"prompt\": ")
	_, err = master.Write([]byte("not-the-pin\r"))
	require.NoError(t, err)
	err = cmd.Wait()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, 1, ee.ExitCode())
	scr.waitFor(t, "hsmkeys: hint:")
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
	require.Error(t, cmd.Wait(), "declining is not success")
	assert.Contains(t, list(), "doomed")

	// "y" destroys it.
	cmd, master, scr = startOnTerminal(t, pe, env, "kek", "destroy", "--label", "doomed")
	scr.waitFor(t, "[y/N] ")
	_, err = master.Write([]byte("y\r"))
	require.NoError(t, err)
	require.NoError(t, cmd.Wait(), "%s", scr.String())
	assert.NotContains(t, list(), "doomed")
}
