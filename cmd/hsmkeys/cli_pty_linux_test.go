package main

// The terminal side of the command line (issue 16), for real: the hsmkeys
// binary runs with a pseudo-terminal as its controlling terminal, and the
// test types at it. Waits are for what appears on the screen or in /proc,
// bounded only by the test's own deadline.

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// waitUntil polls cond until it holds, or fails once exited is closed
// (the program ended) and cond still does not hold; otherwise only the
// test's deadline ends it.
func waitUntil(t *testing.T, what string, exited <-chan struct{}, cond func() bool) {
	t.Helper()
	deadline, ok := t.Deadline()
	for !cond() {
		select {
		case <-exited:
			if cond() {
				return
			}
			t.Fatalf("the program ended before %s", what)
		default:
		}
		if ok && time.Until(deadline) < 5*time.Second {
			t.Fatalf("gave up waiting for %s near the test's deadline", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// endMarker follows the program's output once it has ended.
const endMarker = "\x00hsmkeys-test-end\x00"

// ptyRun is the binary running on a pseudo-terminal.
type ptyRun struct {
	cmd    *exec.Cmd
	master *os.File // the test's side
	tty    *os.File // the program's side
	scr    *screen
	exited chan struct{} // closed when the program has ended
	err    error         // its exit, once exited is closed
}

// tail is the end of the screen, for failure messages.
func (r *ptyRun) tail() string {
	s := r.scr.String()
	return s[max(0, len(s)-2000):]
}

// matches asserts that re matches the screen, showing only its tail if not.
func (r *ptyRun) matches(t *testing.T, re, why string) {
	t.Helper()
	assert.True(t, regexp.MustCompile(re).MatchString(r.scr.String()), "%s: %s; the screen ends %q", why, re, r.tail())
}

// wait is the program's exit.
func (r *ptyRun) wait() error {
	<-r.exited
	return r.err
}

// waitFor waits for text on the terminal.
func (r *ptyRun) waitFor(t *testing.T, text string) {
	t.Helper()
	waitUntil(t, strconv.Quote(text)+" on the terminal", r.exited, func() bool { return strings.Contains(r.scr.String(), text) })
}

// startCtty runs the binary with the pseudo-terminal as its controlling
// terminal, stdout and stderr, and stdin as given (nil: the terminal).
func startCtty(t *testing.T, pe promptEnv, env []string, stdin io.Reader, args ...string) *ptyRun {
	t.Helper()
	master, tty := ptyPair(t)
	cmd := exec.Command(pe.bin, args...)
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = io.Reader(tty), tty, tty
	if stdin != nil {
		cmd.Stdin = stdin
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 2} // stderr's descriptor is the terminal
	require.NoError(t, cmd.Start())
	r := &ptyRun{cmd: cmd, master: master, tty: tty, scr: &screen{}, exited: make(chan struct{})}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-r.exited
	})
	go func() {
		r.err = cmd.Wait()
		// Everything the program wrote is in the terminal's queue; a
		// marker written after it shows when the test has read it all.
		_, _ = tty.Write([]byte(endMarker))
		for !strings.Contains(r.scr.String(), endMarker) {
			time.Sleep(time.Millisecond)
		}
		r.scr.mu.Lock()
		b := bytes.Replace(r.scr.buf.Bytes(), []byte(endMarker), nil, 1)
		r.scr.buf.Reset()
		r.scr.buf.Write(b)
		r.scr.mu.Unlock()
		close(r.exited)
	}()
	go func() {
		b := make([]byte, 64<<10)
		for {
			n, err := master.Read(b)
			r.scr.mu.Lock()
			r.scr.buf.Write(b[:n])
			r.scr.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return r
}

func exitCode(t *testing.T, err error) int {
	t.Helper()
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	return ee.ExitCode()
}

// openIn reports whether process pid has a file in dir open, other than
// except: named, or unnamed (O_TMPFILE: "dir/#123 (deleted)").
func openIn(pid int, dir, except string) bool {
	fdDir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, _ := os.ReadDir(fdDir)
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(fdDir, e.Name())); err == nil && strings.HasPrefix(l, dir+"/") && l != except {
			return true
		}
	}
	return false
}

// withPINFiles is env with the PINs in files (no prompt).
func withPINFiles(pe promptEnv) []string {
	return append(pe.env[:len(pe.env):len(pe.env)], "HSMKEYS_PIN_FILE="+filepath.Join(pe.dir, "user.pin"), "HSMKEYS_SO_PIN_FILE="+filepath.Join(pe.dir, "so.pin"))
}

func runOK(t *testing.T, pe promptEnv, env []string, args ...string) {
	t.Helper()
	cmd := exec.Command(pe.bin, args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
}

// "hsmkeys decrypt < file.cms" asks for the PIN on the controlling
// terminal, as age, ssh and gpg do; a PIN typed wrong there gets a hint
// about typing, not about variables and files.
func TestPromptWithStdinRedirected(t *testing.T) {
	pe := setupPromptToken(t)
	env := withPINFiles(pe)
	runOK(t, pe, env, "kek", "create", "--label", "k")
	plain := filepath.Join(pe.dir, "plain.txt")
	require.NoError(t, os.WriteFile(plain, []byte("a message for the prompt test\n"), 0o600))
	msg := filepath.Join(pe.dir, "msg.cms")
	runOK(t, pe, env, "encrypt", "--kek", "k", "-i", plain, "-o", msg)

	in, err := os.Open(msg)
	require.NoError(t, err)
	defer in.Close()
	out := filepath.Join(pe.dir, "out.txt")
	r := startCtty(t, pe, pe.env, in, "decrypt", "-o", out)
	r.waitFor(t, "PIN for token \"prompt\": ")
	_, err = r.master.Write([]byte(pe.userPIN + "\r"))
	require.NoError(t, err)
	require.NoError(t, r.wait(), "%q", r.tail())
	got, err := os.ReadFile(out)
	require.NoError(t, err)
	assert.Equal(t, "a message for the prompt test\n", string(got))
	assert.NotContains(t, r.scr.String(), pe.userPIN, "the PIN is not echoed")

	_, err = in.Seek(0, io.SeekStart)
	require.NoError(t, err)
	r = startCtty(t, pe, pe.env, in, "decrypt", "-o", out+".2")
	r.waitFor(t, "PIN for token \"prompt\": ")
	_, err = r.master.Write([]byte("not-the-pin\r"))
	require.NoError(t, err)
	assert.Equal(t, 1, exitCode(t, r.wait()))
	r.waitFor(t, "hsmkeys: hint:")
	assert.Contains(t, r.scr.String(), "hsmkeys: hint: the user PIN typed at the prompt was refused: run the command again and type it carefully")
	assert.NotContains(t, r.scr.String(), "HSMKEYS_PIN")
	assert.NotContains(t, r.scr.String(), "not-the-pin")
}

// Ctrl-C at the PIN prompt: exit 130, the terminal's echo back on.
func TestInterruptAtPrompt(t *testing.T) {
	pe := setupPromptToken(t)
	r := startCtty(t, pe, pe.env, nil, "selftest")
	r.waitFor(t, "PIN for token \"prompt\": ")
	st, err := unix.IoctlGetTermios(int(r.tty.Fd()), unix.TCGETS)
	require.NoError(t, err)
	require.Zero(t, st.Lflag&unix.ECHO, "no echo while the PIN is asked for")
	_, err = r.master.Write([]byte{3}) // ^C: SIGINT from the terminal's line discipline
	require.NoError(t, err)
	assert.Equal(t, 130, exitCode(t, r.wait()), "%q", r.tail())
	r.waitFor(t, "hsmkeys: error: interrupted")
	st, err = unix.IoctlGetTermios(int(r.tty.Fd()), unix.TCGETS)
	require.NoError(t, err)
	assert.NotZero(t, st.Lflag&unix.ECHO, "echo restored")
}

// Ctrl-C while encrypting to a file: exit 130, the old file as it was,
// nothing else in its directory. The input is a FIFO the test keeps open,
// so the command is still at work when the signal comes.
func TestInterruptLeavesNothing(t *testing.T) {
	pe := setupPromptToken(t)
	env := withPINFiles(pe)
	runOK(t, pe, env, "kek", "create", "--label", "k")
	outDir := filepath.Join(pe.dir, "out")
	require.NoError(t, os.Mkdir(outDir, 0o700))
	out := filepath.Join(outDir, "msg.cms")
	require.NoError(t, os.WriteFile(out, []byte("the previous content"), 0o600))
	fifo := filepath.Join(pe.dir, "in.fifo")
	require.NoError(t, unix.Mkfifo(fifo, 0o600))
	w, err := os.OpenFile(fifo, os.O_RDWR, 0) // O_RDWR: opening does not wait for the reader
	require.NoError(t, err)
	defer w.Close()
	_, err = w.Write(bytes.Repeat([]byte("x"), 64<<10))
	require.NoError(t, err)

	r := startCtty(t, pe, env, nil, "encrypt", "--kek", "k", "-i", fifo, "-o", out)
	// The output is open (an unnamed O_TMPFILE in outDir: "/out/#123 (deleted)").
	waitUntil(t, "the output file to be open", r.exited, func() bool { return openIn(r.cmd.Process.Pid, outDir, out) })
	_, err = r.master.Write([]byte{3})
	require.NoError(t, err)
	assert.Equal(t, 130, exitCode(t, r.wait()), "%q", r.tail())
	ents, err := os.ReadDir(outDir)
	require.NoError(t, err)
	require.Len(t, ents, 1, "nothing but the old output is left")
	got, err := os.ReadFile(out)
	require.NoError(t, err)
	assert.Equal(t, "the previous content", string(got))
}

// Ctrl-C while decrypt spools stdin (a pipe: read at random offsets
// later) to a temporary file: exit 130 and the spool is gone.
func TestInterruptRemovesSpool(t *testing.T) {
	pe := setupPromptToken(t)
	tmp := filepath.Join(pe.dir, "tmp")
	require.NoError(t, os.Mkdir(tmp, 0o700))
	fifo := filepath.Join(pe.dir, "spool.fifo")
	require.NoError(t, unix.Mkfifo(fifo, 0o600))
	in, err := os.OpenFile(fifo, os.O_RDWR, 0) // the writer stays open: the read never ends
	require.NoError(t, err)
	defer in.Close()
	_, err = in.Write([]byte("not yet a whole message"))
	require.NoError(t, err)
	r := startCtty(t, pe, append(withPINFiles(pe), "TMPDIR="+tmp), in, "decrypt", "-o", filepath.Join(pe.dir, "out"))
	// The spool is open: named or not ("/tmp/#123 (deleted)", O_TMPFILE).
	waitUntil(t, "the spool file to be open", r.exited, func() bool { return openIn(r.cmd.Process.Pid, tmp, "") })
	_, err = r.master.Write([]byte{3})
	require.NoError(t, err)
	assert.Equal(t, 130, exitCode(t, r.wait()), "%q", r.tail())
	ents, err := os.ReadDir(tmp)
	require.NoError(t, err)
	assert.Empty(t, ents, "the spool is removed")
	assert.NoFileExists(t, filepath.Join(pe.dir, "out"))
}

// The progress line is cleared before output goes to the same terminal,
// and the run ends with a one-line summary. stdin is a file, so the size
// is unknown and progress shows from the first read.
func TestProgressEndsBeforeOutput(t *testing.T) {
	pe := setupPromptToken(t)
	env := withPINFiles(pe)
	runOK(t, pe, env, "kek", "create", "--label", "k")
	plain := filepath.Join(pe.dir, "plain")
	require.NoError(t, os.WriteFile(plain, bytes.Repeat([]byte("0123456789abcdef"), 16<<10), 0o600)) // 256 KiB
	in, err := os.Open(plain)
	require.NoError(t, err)
	defer in.Close()
	r := startCtty(t, pe, env, in, "encrypt", "--kek", "k", "--pem")
	require.NoError(t, r.wait(), "%q", r.tail())
	r.waitFor(t, "-----END CMS-----")
	r.waitFor(t, "/s)\r\n")
	s := r.scr.String()
	assert.Contains(t, s[:min(len(s), 2000)], "hsmkeys: encrypting ", "progress was shown")
	r.matches(t, `(^|\r\n|\r\x1b\[K)-----BEGIN CMS-----`, "the output starts at the start of a line")
	assert.False(t, regexp.MustCompile(`(MiB|KiB|B/s)-----BEGIN`).MatchString(s), "no output on the progress line: %q", s[:min(len(s), 300)])
	r.matches(t, `-----END CMS-----\r\n(\r\x1b\[K)?hsmkeys: encrypted 256\.0 KiB in [0-9.]+m?s \([0-9.]+ [KMG]?i?B/s\)\r\n$`, "a one-line summary at the end")
}

// Decrypting a large file names its passes and sums up.
func TestProgressNamesDecryptPass(t *testing.T) {
	if testing.Short() {
		t.Skip("encrypts 33 MiB")
	}
	pe := setupPromptToken(t)
	env := withPINFiles(pe)
	runOK(t, pe, env, "kek", "create", "--label", "k")
	plain := filepath.Join(pe.dir, "plain")
	require.NoError(t, os.WriteFile(plain, make([]byte, largeFile+1<<20), 0o600))
	msg := filepath.Join(pe.dir, "msg.cms")
	runOK(t, pe, env, "encrypt", "--kek", "k", "-i", plain, "-o", msg)
	r := startCtty(t, pe, env, nil, "decrypt", "-i", msg, "-o", filepath.Join(pe.dir, "out"))
	require.NoError(t, r.wait(), "%q", r.tail())
	r.waitFor(t, "/s)\r\n")
	r.matches(t, `hsmkeys: verifying +[0-9]+%  [0-9.]+ [KMG]?i?B of 33\.0 MiB  [0-9.]+ [KMG]?i?B/s  ETA `, "the first pass is named")
	r.matches(t, `\r\x1b\[Khsmkeys: decrypted 33\.0 MiB in [0-9.]+m?s \(`, "a summary")
}

// The CLI keeps the PIN out of core dumps (issue 11): RLIMIT_CORE is 0 and
// the process is not dumpable. A non-dumpable process's /proc files belong
// to root, so the test runs hsmkeys as nobody (it needs root for that).
func TestNoCoreDumps(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run hsmkeys as another user")
	}
	dir := t.TempDir()
	require.NoError(t, os.Chmod(dir, 0o777))
	require.NoError(t, os.Chmod(filepath.Dir(dir), 0o755))
	bin := filepath.Join(dir, "hsmkeys")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.NoError(t, os.Chmod(bin, 0o755))
	// decrypt spools stdin before it opens a token: it waits on the pipe.
	cmd := exec.Command(bin, "decrypt")
	cmd.Env = []string{"TMPDIR=" + dir, "PATH=/usr/bin:/bin"}
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	defer stdin.Close()
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	require.NoError(t, cmd.Start())
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	defer func() { _ = cmd.Process.Kill(); <-exited }()
	waitUntil(t, "the input spool", exited, func() bool { return openIn(cmd.Process.Pid, dir, "") })
	limits, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/limits")
	require.NoError(t, err)
	assert.Regexp(t, `(?m)^Max core file size +0 +0 +bytes`, string(limits))
	var st unix.Stat_t
	require.NoError(t, unix.Stat("/proc/"+strconv.Itoa(cmd.Process.Pid)+"/status", &st))
	assert.Equal(t, uint32(0), st.Uid, "a process of nobody whose /proc files are root's is not dumpable")
}
