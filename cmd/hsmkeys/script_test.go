package main

// Script tests: cmd/hsmkeys/testdata/script/*.txtar run the real command
// (this test binary, re-executed as "hsmkeys" by testscript) against a real
// SoftHSM token that each script makes in its own $WORK: Setup writes a
// softhsm2.conf and random PINs in mode-0600 files, and the script runs
// `hsmkeys init-token` with those files. No PIN is ever on a command line,
// and every run of hsmkeys checks that no PIN appears in what it printed.

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/miekg/pkcs11"
	"github.com/rogpeppe/go-internal/testscript"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"hsmkeys": checkedMain,
		"badkek":  badKEKMain,
	})
}

// checkedMain is main, with stdout and stderr also kept and searched for
// the PINs of the test (listed in the file $HSMKEYS_TEST_SECRETS).
func checkedMain() {
	// A session of its own, with no controlling terminal: a script never
	// asks the developer who runs "go test" in a terminal for a PIN (the
	// prompt uses /dev/tty, whatever stdin is).
	_, _ = syscall.Setsid()
	var out, errOut bytes.Buffer
	code := run(os.Args[1:], os.Stdin, io.MultiWriter(os.Stdout, &out), io.MultiWriter(os.Stderr, &errOut))
	if secrets, err := os.ReadFile(os.Getenv("HSMKEYS_TEST_SECRETS")); err == nil {
		for _, s := range strings.Fields(string(secrets)) {
			if bytes.Contains(out.Bytes(), []byte(s)) || bytes.Contains(errOut.Bytes(), []byte(s)) {
				fmt.Fprintln(os.Stderr, "TEST FAILURE: a PIN appeared in the output of hsmkeys")
				os.Exit(99)
			}
		}
	}
	os.Exit(code)
}

func softhsmModule() string {
	for _, m := range []string{
		"/usr/lib/softhsm/libsofthsm2.so",
		"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
		"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
		"/usr/local/lib/softhsm/libsofthsm2.so",
	} {
		if _, err := os.Stat(m); err == nil {
			return m
		}
	}
	return ""
}

func TestScripts(t *testing.T) {
	module := softhsmModule()
	if _, err := exec.LookPath("softhsm2-util"); module == "" || err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set and SoftHSM 2 is missing (apt-get install softhsm2)")
		}
		t.Skip("SoftHSM 2 is not installed (apt-get install softhsm2)")
	}
	testscript.Run(t, testscript.Params{
		Dir:                 "testdata/script",
		RequireExplicitExec: true,
		Setup:               func(env *testscript.Env) error { return setupToken(env, module) },
		Condition:           condition,
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"flip":        cmdFlip,
			"perm":        cmdPerm,
			"notemp":      cmdNoTemp,
			"lnother":     cmdLinkOther,
			"chownother":  cmdChownOther,
			"bigfile":     cmdBigFile,
			"changeunder": cmdChangeUnder,
			"pinfifo":     cmdPINFIFO,
			"readat":      cmdReadAt,
		},
	})
}

// setupToken gives the script its own SoftHSM configuration and PIN files.
// The token itself is made by the script, with `hsmkeys init-token`.
func setupToken(env *testscript.Env, module string) error {
	dir := env.WorkDir
	tokens := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		return err
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+tokens+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		return err
	}
	var secrets []string
	for _, name := range []string{"user.pin", "so.pin", "wrong.pin"} {
		b := make([]byte, 8)
		if _, err := rand.Read(b); err != nil {
			return err
		}
		pin := hex.EncodeToString(b)
		secrets = append(secrets, pin)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(pin+"\n"), 0o600); err != nil {
			return err
		}
	}
	env.Setenv("TEST_USER_PIN", secrets[0]) // for HSMKEYS_PIN: an environment variable, not argv
	secretsFile := filepath.Join(dir, ".secrets")
	if err := os.WriteFile(secretsFile, []byte(strings.Join(secrets, "\n")), 0o600); err != nil {
		return err
	}
	env.Setenv("SOFTHSM2_CONF", conf)
	env.Setenv("HSMKEYS_MODULE", module)
	env.Setenv("HSMKEYS_TOKEN", "test")
	env.Setenv("HSMKEYS_PIN_FILE", filepath.Join(dir, "user.pin"))
	env.Setenv("HSMKEYS_SO_PIN_FILE", filepath.Join(dir, "so.pin"))
	env.Setenv("HSMKEYS_TEST_SECRETS", secretsFile)
	env.Setenv("MODULE", module)
	// A -race binary sleeps a second at exit by default; the scripts run
	// hsmkeys some two hundred times.
	env.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	return nil
}

// condition answers [openssl] (the openssl on PATH runs `openssl version`;
// the scripts write no authAttrs, so any OpenSSL 3 reads them, and
// internal/testopenssl has the list the interop tests use), [nss] (NSS
// softoken and certutil), [p11kit] (p11-kit's proxy with SoftHSM
// registered), [root] and [unshare]: false skips a script, except under CI,
// where a missing or broken part fails it.
func condition(cond string) (bool, error) {
	var need []string
	switch cond {
	case "root":
		return os.Geteuid() == 0, nil
	case "openssl":
		need = []string{"openssl"}
	case "nss":
		need = []string{"certutil", "/usr/lib/x86_64-linux-gnu/libsoftokn3.so"}
	case "p11kit":
		need = []string{"/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so", "/usr/share/p11-kit/modules/softhsm2.module"}
	case "unshare":
		// A private mount namespace (unshare --mount, root only) to run
		// without /proc or to hide a file from one command; skipped, even
		// under CI, when not root.
		if os.Geteuid() != 0 || exec.Command("unshare", "-m", "true").Run() != nil {
			return false, nil
		}
		need = []string{"unshare", "mount", "/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so", "/usr/share/p11-kit/modules/softhsm2.module"}
	default:
		return false, fmt.Errorf("unknown condition %q", cond)
	}
	for _, n := range need {
		var err error
		if strings.HasPrefix(n, "/") {
			_, err = os.Stat(n)
		} else if n == "openssl" {
			var path string
			if path, err = exec.LookPath(n); err == nil {
				var out []byte
				if out, err = exec.Command(path, "version").CombinedOutput(); err != nil {
					err = fmt.Errorf("%s version: %w: %s", path, err, out)
				}
			}
		} else {
			_, err = exec.LookPath(n)
		}
		if err != nil {
			if os.Getenv("CI") != "" {
				return false, fmt.Errorf("CI is set and %s is missing or broken: %w", n, err)
			}
			return false, nil
		}
	}
	return true, nil
}

// flip FILE OFFSET: flip the low bit of the byte at OFFSET (negative: from
// the end).
func cmdFlip(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: flip FILE OFFSET")
	}
	path := ts.MkAbs(args[0])
	b, err := os.ReadFile(path)
	ts.Check(err)
	off, err := strconv.Atoi(args[1])
	ts.Check(err)
	if off < 0 {
		off += len(b)
	}
	if off < 0 || off >= len(b) {
		ts.Fatalf("offset %s outside %d bytes", args[1], len(b))
	}
	b[off] ^= 1
	ts.Check(os.WriteFile(path, b, 0o600))
}

// perm FILE MODE: the file's permission bits are MODE (octal).
func cmdPerm(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: perm FILE MODE")
	}
	st, err := os.Stat(ts.MkAbs(args[0]))
	ts.Check(err)
	want, err := strconv.ParseUint(args[1], 8, 32)
	ts.Check(err)
	if got := st.Mode().Perm(); (uint64(got) == want) == neg {
		ts.Fatalf("%s has mode %04o; want %s%04o", args[0], got, map[bool]string{true: "not ", false: ""}[neg], want)
	}
}

// notemp DIR...: no temporary file of hsmkeys is left in the directories.
func cmdNoTemp(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) == 0 {
		ts.Fatalf("usage: notemp DIR...")
	}
	for _, d := range args {
		entries, err := os.ReadDir(ts.MkAbs(d))
		ts.Check(err)
		for _, e := range entries {
			if strings.Contains(e.Name(), ".hsmkeys-") || strings.HasPrefix(e.Name(), "hsmkeys-") {
				ts.Fatalf("temporary file left behind: %s", filepath.Join(d, e.Name()))
			}
		}
	}
}

// otherUID is the uid of "another user" in the scripts.
const otherUID = 54321

// lnother LINK TARGET: a symbolic link owned by another user (otherUID),
// as one planted in a shared directory would be. Needs root.
func cmdLinkOther(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: lnother LINK TARGET")
	}
	link := ts.MkAbs(args[0])
	ts.Check(os.Symlink(args[1], link))
	ts.Check(os.Lchown(link, otherUID, otherUID))
}

// chownother FILE: FILE now belongs to another user (otherUID).
func cmdChownOther(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: chownother FILE")
	}
	ts.Check(os.Chown(ts.MkAbs(args[0]), otherUID, otherUID))
}

// bigfile FILE SIZE: FILE holds SIZE bytes of a repeating text.
func cmdBigFile(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: bigfile FILE SIZE")
	}
	n, err := strconv.Atoi(args[1])
	ts.Check(err)
	ts.Check(os.WriteFile(ts.MkAbs(args[0]), bytes.Repeat([]byte("0123456789abcdef"), n/16+1)[:n], 0o600))
}

// changeunder [-o OUT] FILE.cms PLAIN: `hsmkeys decrypt -i FILE.cms`
// while another process (this test) changes a byte of FILE.cms, and wants
// exit status 1 with the error for an input that changed, and nothing
// but a prefix of PLAIN (the true plaintext) released.
//
// Without -o, stdout is a pipe that the test reads one byte of, then
// leaves full; the first byte means the first pass (the tag check) is over
// and the second is under way and now blocked on the pipe, far from the
// end of the file. The test then changes a byte three quarters into
// FILE.cms (in the content of a message of some MiB), drains stdout, and
// wants it to be a prefix of PLAIN.
//
// With -o OUT, nothing blocks on a pipe: the test holds hsmkeys' reads of
// FILE.cms instead, with fanotify permission events (root only): it
// changes a byte of the first 1 MiB block of the content before one of the
// reads after pass 1 read that block and before pass 2 reads it (the read
// that is nb reads from the end of a clean run, nb being the number of
// blocks of the message), and wants OUT to keep the content it had. The
// count follows Decrypt's reads of 1 MiB blocks; should they change, the
// change lands in pass 1 or after pass 2 read the byte, and the test fails
// (stderr must name the error of pass 2), it does not pass by accident.
func cmdChangeUnder(ts *testscript.TestScript, neg bool, args []string) {
	var out string
	if len(args) == 4 && args[0] == "-o" {
		out, args = ts.MkAbs(args[1]), args[2:]
	}
	if neg || len(args) != 2 {
		ts.Fatalf("usage: changeunder [-o OUT] FILE.cms PLAIN")
	}
	path := ts.MkAbs(args[0])
	plain, err := os.ReadFile(ts.MkAbs(args[1]))
	ts.Check(err)
	decrypt := func(args ...string) (*exec.Cmd, *bytes.Buffer) {
		cmd := exec.Command("hsmkeys", append([]string{"decrypt", "-i", path}, args...)...)
		cmd.Dir = ts.MkAbs(".")
		for _, k := range []string{"PATH", "HOME", "TMPDIR", "SOFTHSM2_CONF", "HSMKEYS_MODULE", "HSMKEYS_TOKEN",
			"HSMKEYS_PIN_FILE", "HSMKEYS_TEST_SECRETS", "GORACE"} {
			cmd.Env = append(cmd.Env, k+"="+ts.Getenv(k))
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		return cmd, &stderr
	}
	// flip returns a func that changes the byte at off; it reads the byte
	// now, since a read while gateReads holds reads would wait for itself.
	flip := func(off int64) func() {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		ts.Check(err)
		var b [1]byte
		_, err = f.ReadAt(b[:], off)
		ts.Check(err)
		return func() {
			b[0] ^= 0x01
			_, err := f.WriteAt(b[:], off)
			ts.Check(err)
			ts.Check(f.Close())
		}
	}
	var stderr *bytes.Buffer
	if out == "" {
		var cmd *exec.Cmd
		cmd, stderr = decrypt()
		stdout, err := cmd.StdoutPipe()
		ts.Check(err)
		ts.Check(cmd.Start())
		var one [1]byte
		if _, err := io.ReadFull(stdout, one[:]); err != nil {
			_ = cmd.Wait()
			ts.Fatalf("no output from the second pass: %v\n%s", err, stderr.String())
		}
		st, err := os.Stat(path)
		ts.Check(err)
		flip(st.Size() * 3 / 4)()
		rest, _ := io.ReadAll(stdout)
		got := append(one[:], rest...)
		err = cmd.Wait()
		checkChanged(ts, err, stderr)
		if len(got) > len(plain) || !bytes.Equal(got, plain[:len(got)]) {
			ts.Fatalf("stdout is not a prefix of the plaintext: %d bytes, first difference at byte %d", len(got), firstDiff(got, plain))
		}
		ts.Logf("stdout: %d of %d bytes of the plaintext", len(got), len(plain))
		if !strings.Contains(stderr.String(), fmt.Sprintf("stdout received the first %d bytes of the plaintext, not all of it", len(got))) {
			ts.Fatalf("stderr does not say what stdout received")
		}
		return
	}
	before, err := os.ReadFile(out)
	ts.Check(err)
	// A clean run counts the reads.
	reads := 0
	cmd, stderr := decrypt("-o", ts.MkAbs("changeunder.clean"))
	ts.Check(gateReads(path, cmd, func() { reads++ }))
	ts.Logf("%s", stderr.String())
	got, err := os.ReadFile(ts.MkAbs("changeunder.clean"))
	ts.Check(err)
	if !bytes.Equal(got, plain) {
		ts.Fatalf("the clean run did not give the plaintext")
	}
	nb := (len(plain) + 1<<20 - 1) >> 20
	if reads < 2*nb+1 {
		ts.Fatalf("%d reads of a message of %d blocks, want at least %d", reads, nb, 2*nb+1)
	}
	// 64 KiB into the file is in the first block of the content: the
	// header before it is some hundred bytes.
	change, n := flip(64<<10), 0
	cmd, stderr = decrypt("-o", out)
	err = gateReads(path, cmd, func() {
		if n++; n == reads-nb {
			change()
		}
	})
	checkChanged(ts, err, stderr)
	ts.Logf("%d reads in a clean run; the input changed before read %d", reads, reads-nb)
	if !strings.Contains(stderr.String(), "nothing was written") {
		ts.Fatalf("stderr does not say that nothing was written")
	}
	after, err := os.ReadFile(out)
	ts.Check(err)
	if !bytes.Equal(after, before) {
		ts.Fatalf("%s changed: %d bytes, %d before", out, len(after), len(before))
	}
}

// checkChanged wants the exit status 1 of a decrypt whose input changed.
func checkChanged(ts *testscript.TestScript, err error, stderr *bytes.Buffer) {
	ts.Logf("%s", stderr.String())
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		ts.Fatalf("hsmkeys decrypt of a file changed under it: %v, want exit status 1", err)
	}
	if !strings.Contains(stderr.String(), "the input changed while it was decrypted") {
		ts.Fatalf("stderr does not say the input changed")
	}
}

// gateReads runs cmd with every read of path by another process held by a
// fanotify permission event (FAN_ACCESS_PERM, which needs root) until
// before(), called once per read, has returned; it returns what cmd.Wait
// returns.
func gateReads(path string, cmd *exec.Cmd, before func()) error {
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_CONTENT|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK, unix.O_RDONLY|unix.O_LARGEFILE)
	if err != nil {
		return fmt.Errorf("fanotify (needs root): %w", err)
	}
	g := os.NewFile(uintptr(fd), "fanotify")
	defer g.Close()
	if err := unix.FanotifyMark(fd, unix.FAN_MARK_ADD, unix.FAN_ACCESS_PERM, unix.AT_FDCWD, path); err != nil {
		return fmt.Errorf("fanotify mark: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := g.Read(buf)
			if err != nil {
				return // closed once cmd has ended
			}
			for b := buf[:n]; len(b) >= int(unsafe.Sizeof(unix.FanotifyEventMetadata{})); {
				ev := (*unix.FanotifyEventMetadata)(unsafe.Pointer(&b[0]))
				if ev.Mask&unix.FAN_ACCESS_PERM != 0 && int(ev.Pid) != os.Getpid() {
					before()
				}
				resp := unix.FanotifyResponse{Fd: ev.Fd, Response: unix.FAN_ALLOW}
				_, _ = g.Write((*[unsafe.Sizeof(resp)]byte)(unsafe.Pointer(&resp))[:])
				if ev.Fd >= 0 {
					unix.Close(int(ev.Fd))
				}
				b = b[ev.Event_len:]
			}
		}
	}()
	err = cmd.Wait()
	g.Close()
	<-done
	return err
}

// firstDiff is the offset of the first byte where a and b differ.
func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// pinfifo: `hsmkeys selftest` with a FIFO as PIN file whose writer (this
// test) never writes; once hsmkeys has opened the FIFO (the test's open for
// writing returns only then, so the read is under way) it gets SIGINT, and
// must end, exit status 1, saying it was interrupted.
func cmdPINFIFO(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 0 {
		ts.Fatalf("usage: pinfifo")
	}
	fifo := ts.MkAbs("pin.fifo")
	ts.Check(syscall.Mkfifo(fifo, 0o600))
	cmd := exec.Command("hsmkeys", "--pin-file", fifo, "selftest")
	for _, k := range []string{"PATH", "HOME", "TMPDIR", "SOFTHSM2_CONF", "HSMKEYS_MODULE", "HSMKEYS_TOKEN",
		"HSMKEYS_TEST_SECRETS", "GORACE"} {
		cmd.Env = append(cmd.Env, k+"="+ts.Getenv(k))
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	ts.Check(cmd.Start())
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0) // returns once hsmkeys opened it
	ts.Check(err)
	defer w.Close()
	ts.Check(cmd.Process.Signal(os.Interrupt))
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(time.Minute): // a guard against a hang, not a race
		_ = cmd.Process.Kill()
		ts.Fatalf("hsmkeys still waits for the pin fifo after an interrupt")
	}
	ts.Logf("%s", stderr.String())
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 || !strings.Contains(stderr.String(), "interrupted") {
		ts.Fatalf("hsmkeys after an interrupt while reading the pin: %v, want exit status 130 and \"interrupted\"", err)
	}
}

// cmdReadAt waits until the background command started last has read at
// least BYTES bytes (rchar in /proc/PID/io), so that a signal lands in the
// middle of its work on a fast machine and a loaded one alike. It fails if
// the command ends first; there is no time limit but the test's own.
// Usage: readat BYTES.
func cmdReadAt(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: readat BYTES")
	}
	want, err := strconv.ParseInt(args[0], 10, 64)
	ts.Check(err)
	cmds := ts.BackgroundCmds()
	if len(cmds) == 0 {
		ts.Fatalf("readat: no background command")
	}
	pid := cmds[len(cmds)-1].Process.Pid
	for {
		// A process that has exited is a zombie until it is waited for.
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		ts.Check(err)
		if _, after, ok := bytes.Cut(stat, []byte(") ")); !ok || len(after) == 0 || after[0] == 'Z' {
			ts.Fatalf("readat: the command ended before it read %d bytes", want)
		}
		acct, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
		ts.Check(err)
		for line := range strings.SplitSeq(string(acct), "\n") {
			if v, ok := strings.CutPrefix(line, "rchar: "); ok {
				if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= want {
					return
				}
			}
		}
		time.Sleep(time.Millisecond)
	}
}

// badKEKMain makes a KEK that breaks hsmkeys' policy: an AES key the user
// made (so not trusted), modifiable, without templates. It talks to the
// module directly, as another program on the machine could; the user PIN
// comes from $HSMKEYS_PIN_FILE. Usage: badkek LABEL.
func badKEKMain() {
	if err := badKEK(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "badkek:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func badKEK(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: badkek LABEL")
	}
	ctx := pkcs11.New(os.Getenv("HSMKEYS_MODULE"))
	if ctx == nil {
		return errors.New("cannot load the module")
	}
	if err := ctx.Initialize(); err != nil {
		return err
	}
	defer ctx.Finalize()
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		return err
	}
	for _, slot := range slots {
		info, err := ctx.GetTokenInfo(slot)
		if err != nil || strings.TrimRight(info.Label, " ") != os.Getenv("HSMKEYS_TOKEN") {
			continue
		}
		s, err := ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			return err
		}
		defer ctx.CloseSession(s)
		pin, err := os.ReadFile(os.Getenv("HSMKEYS_PIN_FILE"))
		if err != nil {
			return err
		}
		if err := ctx.Login(s, pkcs11.CKU_USER, strings.TrimSpace(string(pin))); err != nil {
			return err
		}
		value := make([]byte, 32)
		_, _ = rand.Read(value)
		_, err = ctx.CreateObject(s, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, args[0]),
			pkcs11.NewAttribute(pkcs11.CKA_ID, []byte{0, 0, 0, 1, 0xba, 0xd0}),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, value),
		})
		return err
	}
	return errors.New("token " + os.Getenv("HSMKEYS_TOKEN") + " not found")
}
