// Package crash kills hsmkeys with SIGKILL in the middle of its work and
// checks what is left: no session key or other new object on the token, no
// partial output file, every input as it was (or, for an in-place rewrap,
// completely rewrapped), no temporary file. It runs the real binary against
// a real SoftHSM token made in a temporary directory.
//
// No test here depends on the machine's speed: the binary runs over the
// fault module, which holds one chosen PKCS#11 call (a part of the
// encryption, the unwrap of the n-th file, ...) until the test has seen it
// waiting and killed the process. Where the kill lands is chosen by call
// number, counted in a complete run of the same work first.
package crash

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hsmkeys/hsmkeys/internal/faultmod"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var env struct {
	err      error
	dir      string
	bin      string
	module   string
	faultmod string
	label    string
	userPIN  string
	baseEnv  []string
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hsmkeys-crash-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	env.err = setup(dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func setup(dir string) error {
	env.dir = dir
	for _, m := range []string{"/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"} {
		if _, err := os.Stat(m); err == nil {
			env.module = m
		}
	}
	if env.module == "" {
		return errors.New("SoftHSM 2 is not installed (apt-get install softhsm2)")
	}
	so, err := faultmod.Build(filepath.Join(dir, "faultmod"))
	if err != nil {
		return err
	}
	env.faultmod = so
	env.bin = filepath.Join(dir, "hsmkeys")
	build := exec.Command("go", "build", "-o", env.bin, "github.com/hsmkeys/hsmkeys/cmd/hsmkeys")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v: %s", err, out)
	}
	if err := os.MkdirAll(filepath.Join(dir, "tokens"), 0o700); err != nil {
		return err
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+filepath.Join(dir, "tokens")+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		return err
	}
	env.label, env.userPIN = "crash", "crash-user-pin-77"
	pinFile, soFile := filepath.Join(dir, "user.pin"), filepath.Join(dir, "so.pin")
	if err := os.WriteFile(pinFile, []byte(env.userPIN+"\n"), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(soFile, []byte("crash-so-pin-88\n"), 0o600); err != nil {
		return err
	}
	env.baseEnv = append(os.Environ(), "SOFTHSM2_CONF="+conf, "HSMKEYS_MODULE="+env.module, "HSMKEYS_TOKEN="+env.label,
		"HSMKEYS_PIN_FILE="+pinFile, "HSMKEYS_SO_PIN_FILE="+soFile, "HSMKEYS_URI=", "HSMKEYS_PIN=", "HSMKEYS_SO_PIN=")
	os.Setenv("SOFTHSM2_CONF", conf)
	for _, args := range [][]string{
		{"init-token", "--label", env.label},
		{"kek", "create", "--label", "old", "--type", "aes256", "--allow-exposed-at-rest"},
		{"kek", "create", "--label", "new", "--type", "rsa2048"},
	} {
		if out, err := hsmkeys(args...).CombinedOutput(); err != nil {
			return fmt.Errorf("hsmkeys %v: %v: %s", args, err, out)
		}
	}
	return nil
}

func need(t *testing.T) {
	t.Helper()
	if env.err == nil {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("CI is set and the crash-test token is missing: %v", env.err)
	}
	t.Skipf("no crash-test token: %v", env.err)
}

func hsmkeys(args ...string) *exec.Cmd {
	cmd := exec.Command(env.bin, args...)
	cmd.Env = env.baseEnv
	return cmd
}

// fault runs hsmkeys over the fault module (internal/faultmod), which
// forwards every call to SoftHSM. A kill test uses its "hold" line to keep
// one chosen PKCS#11 call of the process waiting, and kills only once the
// module has said that the call waits: an event, not a duration, so the
// kill lands in the middle of the work on a fast machine and on a loaded
// one alike. The fault module is a fake only in that it pauses a call; the
// token behind it is a real SoftHSM token.
type fault struct {
	ctl   *faultmod.Control
	stats string
	gate  string // a held call waits while this file exists
}

func newFault(t *testing.T) *fault {
	t.Helper()
	d := t.TempDir() // apart from the directories the tests compare
	f := &fault{ctl: &faultmod.Control{Path: filepath.Join(d, "control")}, stats: filepath.Join(d, "stats"), gate: filepath.Join(d, "gate")}
	require.NoError(t, f.ctl.Clear())
	return f
}

// cmd is hsmkeys args over the fault module; extra environment entries
// (NAME=value) come last and win.
func (f *fault) cmd(extraEnv []string, args ...string) *exec.Cmd {
	cmd := exec.Command(env.bin, args...)
	cmd.Env = append(append(append(slices.Clone(env.baseEnv), "HSMKEYS_MODULE="+env.faultmod),
		faultmod.Env(env.module, f.ctl.Path, f.stats)...), extraEnv...)
	return cmd
}

// calls runs cmd to completion with no faults and returns the PKCS#11
// calls it made, per function (the module writes them at C_Finalize).
func (f *fault) calls(t *testing.T, cmd *exec.Cmd) map[string]uint64 {
	t.Helper()
	require.NoError(t, f.ctl.Clear())
	_ = os.Remove(f.stats)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	st, err := faultmod.ReadStats(f.stats)
	require.NoError(t, err, "stats written at C_Finalize")
	return st.Calls
}

// killHeld starts cmd with call number from (and every later one) of the
// PKCS#11 function fn held, waits until the module reports the held call
// waiting, runs at (which may look at the live process), and kills the
// process with SIGKILL. It returns the module's stats as the hold began.
func (f *fault) killHeld(t *testing.T, cmd *exec.Cmd, fn string, from uint64, at func(pid int)) *faultmod.Stats {
	t.Helper()
	require.NoError(t, os.WriteFile(f.gate, nil, 0o600))
	defer os.Remove(f.gate)
	_ = os.Remove(f.stats)
	require.NoError(t, f.ctl.Set(fmt.Sprintf("hold %s %s from %d", fn, f.gate, from)))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill() }) // if the test fails before the kill
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var st *faultmod.Stats
	for st == nil {
		select {
		case err := <-exited:
			t.Fatalf("%v ended (%v) before call %d of %s: %s", cmd.Args[1:], err, from, fn, stderr.String())
		default:
		}
		if s, err := faultmod.ReadStats(f.stats); err == nil && s.Holding > 0 {
			st = s
		}
		if d, ok := t.Deadline(); ok && time.Until(d) < 30*time.Second {
			t.Fatalf("%v: the test's deadline is near and call %d of %s was never reached", cmd.Args[1:], from, fn)
		}
		time.Sleep(time.Millisecond)
	}
	if at != nil {
		at(cmd.Process.Pid)
	}
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	err := <-exited
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "%v exited by itself: %s", cmd.Args[1:], stderr.String())
	ws := ee.Sys().(syscall.WaitStatus)
	require.True(t, ws.Signaled() && ws.Signal() == syscall.SIGKILL, "%v: %v", cmd.Args[1:], err)
	t.Logf("hsmkeys %s killed in call %d of %s; stderr %q", cmd.Args[1], from, fn, stderr.String())
	return st
}

// unnamedOutputs returns the sizes of the files that process pid has open
// in dir without a name there (O_TMPFILE: /proc shows "dir/#INODE (deleted)").
func unnamedOutputs(t *testing.T, pid int, dir string) []int64 {
	t.Helper()
	dir, err := filepath.EvalSymlinks(dir)
	require.NoError(t, err)
	fds := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(fds)
	require.NoError(t, err)
	var sizes []int64
	for _, e := range entries {
		link, err := os.Readlink(filepath.Join(fds, e.Name()))
		if err != nil || filepath.Dir(link) != dir || !strings.HasSuffix(link, " (deleted)") {
			continue
		}
		fi, err := os.Stat(filepath.Join(fds, e.Name()))
		require.NoError(t, err)
		sizes = append(sizes, fi.Size())
	}
	return sizes
}

// empty says that dir has nothing in it, and empties it for the next case.
func empty(t *testing.T, dir, msg string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
		require.NoError(t, os.RemoveAll(filepath.Join(dir, e.Name())))
	}
	assert.Empty(t, names, msg)
}

// tokenObjects lists every object a fresh, logged-in context sees: after a
// process died, whatever it left on the token is here (its session objects
// died with it by the standard; this is where a token object would show).
func tokenObjects(t *testing.T) []string {
	t.Helper()
	ctx := pkcs11.New(env.module)
	require.NotNil(t, ctx)
	require.NoError(t, ctx.Initialize())
	defer func() { _ = ctx.Finalize(); ctx.Destroy() }()
	slots, err := ctx.GetSlotList(true)
	require.NoError(t, err)
	var slot uint
	found := false
	for _, s := range slots {
		ti, err := ctx.GetTokenInfo(s)
		if err == nil && strings.TrimRight(ti.Label, " ") == env.label {
			slot, found = s, true
		}
	}
	require.True(t, found)
	s, err := ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
	require.NoError(t, err)
	require.NoError(t, ctx.Login(s, pkcs11.CKU_USER, env.userPIN))
	require.NoError(t, ctx.FindObjectsInit(s, nil))
	hs, _, err := ctx.FindObjects(s, 1000)
	require.NoError(t, err)
	require.NoError(t, ctx.FindObjectsFinal(s))
	var out []string
	for _, h := range hs {
		a, err := ctx.GetAttributeValue(s, h, []*pkcs11.Attribute{{Type: pkcs11.CKA_CLASS}, {Type: pkcs11.CKA_LABEL}, {Type: pkcs11.CKA_TOKEN}, {Type: pkcs11.CKA_ID}})
		require.NoError(t, err)
		out = append(out, fmt.Sprintf("class=%x label=%s token=%x id=%x", a[0].Value, a[1].Value, a[2].Value, a[3].Value))
	}
	sort.Strings(out)
	return out
}

// dirState maps every entry of dir to the SHA-256 of its content.
func dirState(t *testing.T, dir string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	st := map[string]string{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		require.NoError(t, err)
		st[e.Name()] = fmt.Sprintf("%x", sha256.Sum256(b))
	}
	return st
}

// bigFile writes n bytes of a pattern.
func bigFile(t *testing.T, path string, n int64) {
	t.Helper()
	f, err := os.Create(path)
	require.NoError(t, err)
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for n > 0 {
		k := min(n, int64(len(buf)))
		_, err := f.Write(buf[:k])
		require.NoError(t, err)
		n -= k
	}
	require.NoError(t, f.Close())
}

func TestKilledWhileGeneratingKeys(t *testing.T) {
	need(t)
	f := newFault(t)
	before := tokenObjects(t)
	// Held in C_DestroyObject: a worker has a session key it just made and
	// has not destroyed yet when the kill lands, after a few hundred more.
	cmd := f.cmd(nil, "bench", "--op", "generate", "--workers", "4", "--duration", "1h")
	st := f.killHeld(t, cmd, "C_DestroyObject", 300, nil)
	assert.GreaterOrEqual(t, st.Calls["C_GenerateKey"], uint64(250), "keys were being made")
	assert.Equal(t, before, tokenObjects(t), "the token holds exactly what it held before")
}

func TestKilledWhileEncryptingAndDecrypting(t *testing.T) {
	need(t)
	f := newFault(t)
	src := t.TempDir()
	in := filepath.Join(src, "in")
	bigFile(t, in, 8<<20) // more than 4 MiB: decrypted in two passes
	msg := filepath.Join(src, "in.cms")
	dir := t.TempDir()
	out := filepath.Join(dir, "out.cms")
	require.NoError(t, os.WriteFile(out, []byte("the previous file"), 0o600))
	before := dirState(t, dir)
	objects := tokenObjects(t)
	tmp := t.TempDir()
	tmpEnv := []string{"TMPDIR=" + tmp}

	// A complete encryption tells how many C_EncryptUpdate calls the work
	// takes; the kills land at chosen calls of it.
	parts := f.calls(t, f.cmd(nil, "encrypt", "--kek", "old", "-i", in, "-o", msg))["C_EncryptUpdate"]
	require.Greater(t, parts, uint64(100), "8 MiB in parts")
	// Open makes C_EncryptUpdate calls of its own (the token profile's
	// probe of multi-part GCM); an empty message is one C_Encrypt, so its
	// run counts only those.
	scratch := t.TempDir()
	emptyIn := filepath.Join(scratch, "empty")
	require.NoError(t, os.WriteFile(emptyIn, nil, 0o600))
	opening := f.calls(t, f.cmd(nil, "encrypt", "--kek", "old", "-i", emptyIn, "-o", filepath.Join(scratch, "empty.cms")))["C_EncryptUpdate"]
	stdin := func(cmd *exec.Cmd, path string) *exec.Cmd {
		r, err := os.Open(path)
		require.NoError(t, err)
		t.Cleanup(func() { r.Close() })
		cmd.Stdin = r
		return cmd
	}
	for _, k := range []struct {
		name    string
		cmd     *exec.Cmd
		from    uint64
		partial bool // some ciphertext is written when the kill lands
	}{
		{"at the first part", f.cmd(tmpEnv, "encrypt", "--kek", "old", "-i", in, "-o", out), opening + 1, false},
		{"half-way", f.cmd(tmpEnv, "encrypt", "--kek", "old", "-i", in, "-o", out), parts / 2, true},
		{"half-way, from stdin", stdin(f.cmd(tmpEnv, "encrypt", "--kek", "old", "-o", out), in), parts / 2, true},
	} {
		f.killHeld(t, k.cmd, "C_EncryptUpdate", k.from, func(pid int) {
			sizes := unnamedOutputs(t, pid, dir)
			require.Len(t, sizes, 1, "encrypt %s: the output is being written, with no name yet", k.name)
			if k.partial {
				assert.Greater(t, sizes[0], int64(1<<20), "encrypt %s: a partial output", k.name)
			}
		})
		assert.Equal(t, before, dirState(t, dir), "encrypt killed %s: input and previous output as they were, nothing else in the directory", k.name)
		empty(t, tmp, "encrypt killed "+k.name+": no temporary file")
	}
	assert.Equal(t, objects, tokenObjects(t))

	// Decryption of a large message: pass 1 checks the tag (AES-CTR and
	// AES-GCM, both as C_EncryptUpdate, on two sessions), pass 2 writes the
	// plaintext (AES-CTR). A small message is one C_Decrypt.
	plain := filepath.Join(dir, "plain")
	require.NoError(t, os.WriteFile(plain, []byte("previous plaintext"), 0o600))
	before = dirState(t, dir)
	parts = f.calls(t, f.cmd(nil, "decrypt", "-i", msg, "-o", filepath.Join(src, "plain")))["C_EncryptUpdate"]
	require.Greater(t, parts, uint64(100))
	small, smallMsg := filepath.Join(src, "small"), filepath.Join(src, "small.cms")
	bigFile(t, small, 1<<20)
	require.NoError(t, hsmkeys("encrypt", "--kek", "old", "-i", small, "-o", smallMsg).Run())
	oneShot := f.calls(t, f.cmd(nil, "decrypt", "-i", smallMsg, "-o", filepath.Join(src, "small.out")))["C_Decrypt"]
	require.Positive(t, oneShot)
	pemMsg := filepath.Join(src, "in.pem") // decoded to a scratch file first
	require.NoError(t, hsmkeys("encrypt", "--kek", "old", "--pem", "-i", in, "-o", pemMsg).Run())
	pemParts := f.calls(t, f.cmd(nil, "decrypt", "-i", pemMsg, "-o", filepath.Join(src, "plain")))["C_EncryptUpdate"]
	require.Greater(t, pemParts, uint64(100))
	for _, k := range []struct {
		name    string
		cmd     *exec.Cmd
		fn      string
		from    uint64
		partial bool // some plaintext is written when the kill lands
	}{
		{"checking the tag", f.cmd(tmpEnv, "decrypt", "-i", msg, "-o", plain), "C_EncryptUpdate", parts / 6, false},
		{"writing the plaintext", f.cmd(tmpEnv, "decrypt", "-i", msg, "-o", plain), "C_EncryptUpdate", parts * 11 / 12, true},
		{"writing the plaintext, from stdin", stdin(f.cmd(tmpEnv, "decrypt", "-o", plain), msg), "C_EncryptUpdate", parts * 11 / 12, true},
		{"writing the plaintext of a PEM message", f.cmd(tmpEnv, "decrypt", "-i", pemMsg, "-o", plain), "C_EncryptUpdate", pemParts * 11 / 12, true},
		// The last C_Decrypt of the process is the message's.
		{"in one shot", f.cmd(tmpEnv, "decrypt", "-i", smallMsg, "-o", plain), "C_Decrypt", oneShot, false},
	} {
		f.killHeld(t, k.cmd, k.fn, k.from, func(pid int) {
			sizes := unnamedOutputs(t, pid, dir)
			require.Len(t, sizes, 1, "decrypt %s: the output is open, with no name yet", k.name)
			if k.partial {
				assert.Greater(t, sizes[0], int64(1<<20), "decrypt %s: plaintext of the authenticated message is being written", k.name)
			} else {
				assert.Zero(t, sizes[0], "decrypt %s: no plaintext before the tag is checked", k.name)
			}
		})
		assert.Equal(t, before, dirState(t, dir), "decrypt killed %s: no partial plaintext", k.name)
		empty(t, tmp, "decrypt killed "+k.name+": no temporary file")
	}
	assert.Equal(t, objects, tokenObjects(t))
}

func TestKilledWhileRewrapping(t *testing.T) {
	need(t)
	f := newFault(t)
	dir := t.TempDir()
	const n = 60
	var files []string
	for i := 0; i < n; i++ {
		f := filepath.Join(dir, fmt.Sprintf("key%03d.cms", i))
		require.NoError(t, hsmkeys("key", "new", "--kek", "old", "-o", f).Run())
		files = append(files, f)
	}
	// Spare keys tell how many C_UnwrapKey calls a rewrap makes to start
	// (opening the token) and per file.
	spare := t.TempDir()
	var spares []string
	for i := range 3 {
		f := filepath.Join(spare, fmt.Sprintf("spare%d.cms", i))
		require.NoError(t, hsmkeys("key", "new", "--kek", "old", "-o", f).Run())
		spares = append(spares, f)
	}
	rewrap := func(files ...string) *exec.Cmd {
		return f.cmd(nil, append([]string{"key", "rewrap", "--kek", "new", "-j", "2"}, files...)...)
	}
	one := f.calls(t, rewrap(spares[0]))["C_UnwrapKey"]
	two := f.calls(t, rewrap(spares[1:]...))["C_UnwrapKey"]
	require.Greater(t, two, one)
	perFile := two - one
	orig := dirState(t, dir)
	objects := tokenObjects(t)

	// Held at the first unwrap of the file after the first half: the
	// files before it are done, or being done, and the rest not started.
	f.killHeld(t, rewrap(files...), "C_UnwrapKey", one-perFile+perFile*n/2+1, nil)

	after := dirState(t, dir)
	require.Len(t, after, n, "no temporary file left in the directory")
	changed := 0
	for _, f := range files {
		name := filepath.Base(f)
		if after[name] == orig[name] {
			continue
		}
		changed++
		// A changed file is a whole, valid blob wrapped for the new KEK.
		cmd := hsmkeys("--json", "key", "inspect", "--verify", f)
		var stdout bytes.Buffer
		cmd.Stdout = &stdout
		require.NoError(t, cmd.Run(), "%s is not a valid exported key after the kill", name)
		var doc struct { // hsmkeys' --json document: {"schema": 1, "result": ...}
			Result struct {
				Recipients []struct {
					Kind string `json:"kind"`
				} `json:"recipients"`
			} `json:"result"`
		}
		require.NoError(t, json.NewDecoder(io.LimitReader(&stdout, 1<<20)).Decode(&doc))
		info := doc.Result
		require.Len(t, info.Recipients, 1)
		assert.Equal(t, "ktri", info.Recipients[0].Kind, "%s is wrapped for the new (rsa) kek", name)
	}
	t.Logf("%d of %d files rewrapped before the kill; the others untouched", changed, n)
	assert.Positive(t, changed, "the kill came mid-way")
	assert.Less(t, changed, n, "the kill came mid-way")
	assert.Equal(t, objects, tokenObjects(t))
}
