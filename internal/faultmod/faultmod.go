// Package faultmod builds and drives faultmod.so, a PKCS#11 v2.40 module for
// tests. It forwards every call to a real module (SoftHSM in our tests) and,
// on the way, adds latency, injects CKR_* errors, caps sessions and simulates
// a token that drops its sessions or leaves its slot.
//
// Use:
//
//	so, err := faultmod.Build(t.TempDir())
//	ctl := &faultmod.Control{Path: filepath.Join(dir, "faults")}
//	for _, kv := range faultmod.Env("/usr/lib/softhsm/libsofthsm2.so", ctl.Path, "") {
//		k, v, _ := strings.Cut(kv, "=")
//		t.Setenv(k, v)
//	}
//	ctx := pkcs11.New(so) // reads the environment now
//	...
//	ctl.Set("fail C_Encrypt CKR_DEVICE_ERROR every 3")
//
// The module reads FAULTMOD_TARGET once, on the first C_GetFunctionList or
// C_Initialize, and FAULTMOD_CONTROL and FAULTMOD_STATS on every
// C_Initialize that follows a C_Finalize. Set the environment before
// pkcs11.New, or pass [Env] to a child process. The real module is loaded
// once per process and so is shared: one pkcs11.Ctx per test process is the
// simple way; C_Finalize of faultmod.so finalizes the real module too.
//
// # Control file
//
// The module stats the control file on every call and re-reads it when its
// inode, size or times change; a missing file means no faults. [Control]
// writes it atomically. One directive per line, "#" starts a comment:
//
//	latency_us N                 sleep N µs before every call
//	latency_us FUNCTION N        ... before FUNCTION only (overrides the line above)
//	fail FUNCTION|* CODE [every N] [from K] [prob P [seed S]] [count C] [after]
//	max_sessions N               C_OpenSession answers CKR_SESSION_COUNT while N
//	                             sessions opened through the module are open (0: no cap)
//	close_all_sessions           one-shot: the next call first closes every session
//	                             in the real module (C_CloseAllSessions on every slot),
//	                             once no call is inside it (see below)
//	token_gone [0|1|CODE]        1 (or no argument): the token is out of its slot
//	stats                        one-shot: write the stats file now
//	hold FUNCTION|* PATH [every N] [from K] [count C] [after]
//	                             matching calls wait while the file PATH exists
//	personality NAME...          simulate vendor behaviour (see below)
//	generation N                 written by Control; one-shots fire once per generation
//
// FUNCTION is a CK_FUNCTION_LIST member name such as C_Encrypt. CODE is a
// non-zero decimal or 0x-hex number or one of CKR_HOST_MEMORY,
// CKR_GENERAL_ERROR, CKR_FUNCTION_FAILED, CKR_ARGUMENTS_BAD,
// CKR_DEVICE_ERROR, CKR_DEVICE_MEMORY, CKR_DEVICE_REMOVED,
// CKR_FUNCTION_CANCELED, CKR_KEY_HANDLE_INVALID, CKR_OBJECT_HANDLE_INVALID,
// CKR_OPERATION_ACTIVE, CKR_PIN_INCORRECT, CKR_PIN_LOCKED,
// CKR_SESSION_CLOSED, CKR_SESSION_COUNT, CKR_SESSION_HANDLE_INVALID,
// CKR_TOKEN_NOT_PRESENT, CKR_TOKEN_NOT_RECOGNIZED, CKR_USER_NOT_LOGGED_IN,
// CKR_CRYPTOKI_NOT_INITIALIZED. N, K, C and S are decimal or 0x-hex.
//
// A fail line counts the calls to its function from the moment the control
// file that holds it is loaded (any rewrite restarts the count and the random
// sequence). It injects CODE when all its conditions hold: "every N" on calls
// N, 2N, ...; "from K" on call K and later; "prob P" with probability P from
// a splitmix64 sequence seeded with S (default 0); "count C" at most C times.
// With no condition it fails every call. "*" matches every function except
// C_GetFunctionList, C_Initialize and C_Finalize, which fail only when named.
// Lines are tried in order; the first that fires decides, but every matching
// line counts the call. By default the failing call never reaches the real
// module; with "after" it is forwarded and its answer replaced ("the token
// did it, the reply was lost").
//
// Counting is per PKCS#11 call, not per miekg/pkcs11 method: miekg's Encrypt,
// Decrypt, Sign, WrapKey and friends call the C function twice (length query,
// then the real call), GenerateKey and GenerateRandom once.
//
// To stay faithful to a real token an injected failure has side effects:
// CKR_SESSION_HANDLE_INVALID and CKR_SESSION_CLOSED close the session in the
// real module; a failure of C_Encrypt*, C_Decrypt*, C_Digest*, C_Sign*,
// C_Verify* or a dual-function update ends the active operation (PKCS#11
// v2.40 base, 5.2), by driving the matching C_*Final into a scratch buffer,
// so the caller's next C_*Init succeeds.
//
// A hold line makes a test independent of the machine's speed: a call it
// matches (counted and conditioned like a fail line, "count C" capping the
// calls held) waits, after any latency and before it is forwarded or fails,
// for as long as the file PATH (absolute, no spaces) exists; removing the
// file releases it, rewriting the control file does not. When a call starts
// and stops waiting the module writes the stats file, whose "holding" line
// says how many calls wait now: a test that waits for holding > 0 knows the
// process is in the middle of the held call, on any machine. At most 8 hold
// lines; the first that applies holds the call, every matching one counts it.
// With "after" the call is forwarded first and its answer waits, as from a
// token that is slow to answer: the call counts as inside the real module.
//
// Closing every session (close_all_sessions, or the token coming back) waits
// until no call is inside the real module, and lets no call in until it is
// done; the stats file, written when it starts to wait, then says
// "closing 1". SoftHSM frees the state of a session that C_CloseAllSessions
// closes even while another thread is using it, so a close that met a call
// in flight crashed now and then; tests need no timing to avoid that.
//
// While token_gone is set every call answers CODE (default
// CKR_TOKEN_NOT_PRESENT), except C_Initialize, C_Finalize, C_GetInfo,
// C_GetSlotInfo (CKF_TOKEN_PRESENT cleared), C_GetSlotList (no slot when
// tokenPresent is true) and C_WaitForSlotEvent. When it is cleared, the first
// call closes every real session, as on a token that restarted, so old
// handles answer CKR_SESSION_HANDLE_INVALID; a gone/back pair that no call
// saw has no effect.
//
// # Personalities
//
// A personality line makes the module behave as a kind of token that is
// not here, over the real module (simulations, documented as such in
// docs/tokens.md). Names combine; C_GetTokenInfo then reports manufacturer
// "hsmkeys faultmod" and the model of the first in this order:
//
//	cap16k            C_Encrypt, C_Decrypt and C_*Update take at most 16384
//	                  bytes (CKR_DATA_LEN_RANGE, CKR_ENCRYPTED_DATA_LEN_RANGE
//	                  above); model "sim CloudHSM", so that the identity table
//	                  gives the limit, which no probe can find
//	iv-params         the token makes the AES-GCM IV of every encryption and
//	                  ignores the caller's: a random IV replaces it before the
//	                  call reaches the real module and is written back into
//	                  the caller's CK_GCM_PARAMS.pIv (AWS CloudHSM style);
//	                  model "sim-iv-params"
//	iv-append         the token makes the IV and returns it after the output
//	                  of C_Encrypt or C_EncryptFinal: ct || tag || iv (12
//	                  bytes; the layout chosen for a Luna-style token);
//	                  model "sim-iv-append"
//	no-multipart-gcm  C_EncryptUpdate and C_DecryptUpdate under CKM_AES_GCM
//	                  answer CKR_FUNCTION_NOT_SUPPORTED (NSS softoken style);
//	                  model "sim-no-mp-gcm"
//	tag-invalid       a failed GCM tag check answers CKR_ENCRYPTED_DATA_INVALID
//	                  and a failed unwrap CKR_WRAPPED_KEY_INVALID (SoftHSM: both
//	                  CKR_GENERAL_ERROR), so that an injected CKR_GENERAL_ERROR
//	                  is a device fault only; model "sim-tag-invalid"
//	no-gcm            no CKM_AES_GCM and no AES key wrap in the mechanism list,
//	                  and their use refused with CKR_MECHANISM_INVALID
//	                  (openCryptoki 3.8.1 soft token, tpm2-pkcs11 1.9); model
//	                  "sim-no-gcm"
//	cryptoki-2.20     C_GetInfo reports Cryptoki 2.20, and C_GenerateKey,
//	                  C_CreateObject and C_CopyObject refuse a template naming
//	                  CKA_COPYABLE or CKA_WRAP_WITH_TRUSTED with
//	                  CKR_ATTRIBUTE_TYPE_INVALID; model "sim-cryptoki220"
//	unwrap-value-len  C_UnwrapKey refuses a template without CKA_VALUE_LEN
//	                  (CKR_TEMPLATE_INCOMPLETE) and drops it before the real
//	                  module, which refuses it (Luna wants it, SoftHSM refuses
//	                  it, TOKEN-FACTS); model "sim Luna", so that the identity
//	                  table gives it
//
// # Stats
//
// If FAULTMOD_STATS is set the module writes, on C_Finalize, on a "stats"
// line and when a held call starts or stops waiting, the number of calls and
// injected faults per function since C_Initialize; see [ReadStats]. Malformed control lines are reported on
// stderr, skipped, and counted as load errors.
package faultmod

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/hsmkeys/hsmkeys/internal/pkcs11h"
	"io/fs"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// BUG(faultmod): Ending an operation after an injected failure is best
// effort: it relies on the real module accepting C_*Final for the
// mechanism, and C_SignRecover/C_VerifyRecover operations are not ended.

// BUG(faultmod): close_all_sessions and "token back" forget every tracked
// session; a C_OpenSession racing with them on another thread may be
// forgotten too and then not count towards max_sessions.

// Personalities are the names a personality line takes.
var Personalities = []string{"cap16k", "iv-params", "iv-append", "no-multipart-gcm", "tag-invalid", "no-gcm", "cryptoki-2.20", "unwrap-value-len"}

// BUG(faultmod): The personalities track the GCM operation of at most 512
// sessions at once; beyond that an iv-append encryption comes back without
// its IV, as from a token that takes the caller's.

// Environment variables read by faultmod.so.
const (
	EnvTarget  = "FAULTMOD_TARGET"
	EnvControl = "FAULTMOD_CONTROL"
	EnvStats   = "FAULTMOD_STATS"
)

// ErrNoCompiler is returned (wrapped) by [Build] when gcc is not on PATH.
var ErrNoCompiler = errors.New("faultmod: gcc not found")

//go:embed faultmod.c
var sources embed.FS

// buildFS lays out what gcc compiles: faultmod.c, and the PKCS#11 headers
// (internal/pkcs11h) under include/.
var buildFS = []struct {
	dir string
	fs  embed.FS
}{{".", sources}, {"include", pkcs11h.Headers}}

var (
	buildMu sync.Mutex
	built   = map[string]string{} // absolute dir -> .so path
)

// Build compiles faultmod.c with gcc into dir and returns the path of the
// shared library. The file is named after a hash of the sources and reused
// if present, so dir may be a cache shared by processes; within a process
// each dir is built once. Build is safe for concurrent use.
func Build(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("faultmod: %w", err)
	}
	buildMu.Lock()
	defer buildMu.Unlock()
	if so, ok := built[abs]; ok {
		return so, nil
	}
	so, err := build(abs)
	if err != nil {
		return "", err
	}
	built[abs] = so
	return so, nil
}

func build(dir string) (string, error) {
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrNoCompiler, err)
	}
	sum, err := sourceHash()
	if err != nil {
		return "", err
	}
	so := filepath.Join(dir, "faultmod-"+sum+".so")
	if _, err := os.Stat(so); err == nil {
		return so, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("faultmod: %w", err)
	}
	src, err := os.MkdirTemp(dir, ".faultmod-build-")
	if err != nil {
		return "", fmt.Errorf("faultmod: %w", err)
	}
	defer os.RemoveAll(src)
	for _, b := range buildFS {
		if err := os.CopyFS(filepath.Join(src, b.dir), b.fs); err != nil {
			return "", fmt.Errorf("faultmod: %w", err)
		}
	}
	cmd := exec.Command(gcc, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror",
		"-o", "faultmod.so", "faultmod.c", "-ldl", "-lpthread")
	cmd.Dir = src
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("faultmod: gcc: %v\n%s", err, out)
	}
	// Rename so that a concurrent process never loads a half-written file.
	if err := os.Rename(filepath.Join(src, "faultmod.so"), so); err != nil {
		return "", fmt.Errorf("faultmod: %w", err)
	}
	return so, nil
}

func sourceHash() (string, error) {
	h := sha256.New()
	for _, src := range buildFS {
		err := fs.WalkDir(src.fs, ".", func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := src.fs.ReadFile(path)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "%s/%s %d\n", src.dir, path, len(b))
			h.Write(b)
			return nil
		})
		if err != nil {
			return "", fmt.Errorf("faultmod: %w", err)
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// Env returns the environment entries ("NAME=value") that point faultmod.so
// at the real module target, the control file and the stats file; empty
// control or stats are left out. Apply them with os.Setenv (or t.Setenv)
// before pkcs11.New, or append them to a child's exec.Cmd.Env.
func Env(target, control, stats string) []string {
	env := []string{EnvTarget + "=" + target}
	if control != "" {
		env = append(env, EnvControl+"="+control)
	}
	if stats != "" {
		env = append(env, EnvStats+"="+stats)
	}
	return env
}

// Control writes the control file at Path. Every write carries a new
// generation, so one-shot lines (close_all_sessions, stats) fire once per
// Set even when the lines repeat. A Control is safe for concurrent use and
// must not be copied after first use.
type Control struct {
	Path string

	mu  sync.Mutex
	gen uint64
}

// Set replaces the whole fault configuration with lines (see the package
// doc for the grammar); an argument may hold several lines. Lines are
// checked first, and nothing is written if one is malformed. The module
// picks the new file up on its next call.
func (c *Control) Set(lines ...string) error {
	var body strings.Builder
	fails, holds := 0, 0
	for _, arg := range lines {
		for line := range strings.SplitSeq(arg, "\n") {
			isFail, err := checkLine(line)
			if err != nil {
				return fmt.Errorf("faultmod: control line %q: %w", line, err)
			}
			if isFail {
				fails++
			}
			if w := fields(line); len(w) > 0 && w[0] == "hold" {
				holds++
			}
			body.WriteString(line)
			body.WriteByte('\n')
		}
	}
	if fails > maxRules {
		return fmt.Errorf("faultmod: %d fail lines, at most %d", fails, maxRules)
	}
	if holds > maxHolds {
		return fmt.Errorf("faultmod: %d hold lines, at most %d", holds, maxHolds)
	}
	return c.write(body.String())
}

// Clear removes every fault: the module then forwards calls unchanged.
func (c *Control) Clear() error {
	return c.Set()
}

func (c *Control) write(body string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.Path == "" {
		return errors.New("faultmod: control path is empty")
	}
	var oldMtime time.Time
	if fi, err := os.Stat(c.Path); err == nil {
		oldMtime = fi.ModTime()
		if g, ok := fileGeneration(c.Path); ok && g > c.gen {
			c.gen = g
		}
	}
	c.gen++
	f, err := os.CreateTemp(filepath.Dir(c.Path), ".faultmod-control-")
	if err != nil {
		return fmt.Errorf("faultmod: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename there is nothing to remove
	_, err = fmt.Fprintf(f, "# written by faultmod.Control\ngeneration %d\n%s", c.gen, body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("faultmod: %w", err)
	}
	// The module detects changes by inode, size and times. File times tick
	// coarsely, so set an exact, strictly newer mtime ourselves.
	mtime := time.Now()
	if !mtime.After(oldMtime) {
		mtime = oldMtime.Add(time.Microsecond)
	}
	if err := os.Chtimes(tmp, mtime, mtime); err != nil {
		return fmt.Errorf("faultmod: %w", err)
	}
	if err := os.Rename(tmp, c.Path); err != nil {
		return fmt.Errorf("faultmod: %w", err)
	}
	return nil
}

func fileGeneration(path string) (uint64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		w := fields(sc.Text())
		if len(w) == 2 && w[0] == "generation" {
			if g, err := parseNumber(w[1]); err == nil {
				return g, true
			}
		}
	}
	return 0, false
}

// Stats are the counters faultmod.so writes to FAULTMOD_STATS, counted since
// the last C_Initialize.
type Stats struct {
	Generation   uint64            // generation of the control file in force
	Loads        uint64            // control-file loads
	LoadErrors   uint64            // malformed control lines seen
	OpenSessions int               // sessions opened through the module and still open
	Holding      uint64            // calls waiting on a hold line now
	Held         uint64            // calls held since C_Initialize
	Closing      bool              // a close of every session waits for calls inside the module
	Calls        map[string]uint64 // calls per function, including injected ones
	Injected     map[string]uint64 // injected faults per function
}

// ReadStats parses a stats file written by faultmod.so.
func ReadStats(path string) (*Stats, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("faultmod: %w", err)
	}
	s := &Stats{Calls: map[string]uint64{}, Injected: map[string]uint64{}}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		w := fields(sc.Text())
		if len(w) == 0 {
			continue
		}
		bad := fmt.Errorf("faultmod: %s:%d: malformed stats line", path, n)
		switch {
		case len(w) == 2 && w[0] == "open_sessions":
			v, err := strconv.Atoi(w[1])
			if err != nil {
				return nil, bad
			}
			s.OpenSessions = v
		case len(w) == 2:
			v, err := strconv.ParseUint(w[1], 10, 64)
			if err != nil {
				return nil, bad
			}
			switch w[0] {
			case "generation":
				s.Generation = v
			case "loads":
				s.Loads = v
			case "load_errors":
				s.LoadErrors = v
			case "holding":
				s.Holding = v
			case "held":
				s.Held = v
			case "closing":
				s.Closing = v != 0
			}
		case len(w) == 5 && w[1] == "calls" && w[3] == "injected":
			calls, err1 := strconv.ParseUint(w[2], 10, 64)
			inj, err2 := strconv.ParseUint(w[4], 10, 64)
			if err1 != nil || err2 != nil {
				return nil, bad
			}
			s.Calls[w[0]] = calls
			s.Injected[w[0]] = inj
		default:
			return nil, bad
		}
	}
	return s, nil
}

// The grammar check below mirrors parse_line in faultmod.c; the tests load
// every name and code through the module to keep the two in step.

const (
	maxRules    = 64   // MAX_RULES in faultmod.c
	maxHolds    = 8    // MAX_HOLDS
	holdPathMax = 1024 // HOLD_PATH_MAX
)

// functions lists CK_FUNCTION_LIST (v2.40) in order, as in pkcs11f.h.
var functions = []string{
	"C_Initialize", "C_Finalize", "C_GetInfo", "C_GetFunctionList",
	"C_GetSlotList", "C_GetSlotInfo", "C_GetTokenInfo", "C_GetMechanismList",
	"C_GetMechanismInfo", "C_InitToken", "C_InitPIN", "C_SetPIN",
	"C_OpenSession", "C_CloseSession", "C_CloseAllSessions", "C_GetSessionInfo",
	"C_GetOperationState", "C_SetOperationState", "C_Login", "C_Logout",
	"C_CreateObject", "C_CopyObject", "C_DestroyObject", "C_GetObjectSize",
	"C_GetAttributeValue", "C_SetAttributeValue", "C_FindObjectsInit", "C_FindObjects",
	"C_FindObjectsFinal", "C_EncryptInit", "C_Encrypt", "C_EncryptUpdate",
	"C_EncryptFinal", "C_DecryptInit", "C_Decrypt", "C_DecryptUpdate",
	"C_DecryptFinal", "C_DigestInit", "C_Digest", "C_DigestUpdate",
	"C_DigestKey", "C_DigestFinal", "C_SignInit", "C_Sign",
	"C_SignUpdate", "C_SignFinal", "C_SignRecoverInit", "C_SignRecover",
	"C_VerifyInit", "C_Verify", "C_VerifyUpdate", "C_VerifyFinal",
	"C_VerifyRecoverInit", "C_VerifyRecover", "C_DigestEncryptUpdate", "C_DecryptDigestUpdate",
	"C_SignEncryptUpdate", "C_DecryptVerifyUpdate", "C_GenerateKey", "C_GenerateKeyPair",
	"C_WrapKey", "C_UnwrapKey", "C_DeriveKey", "C_SeedRandom",
	"C_GenerateRandom", "C_GetFunctionStatus", "C_CancelFunction", "C_WaitForSlotEvent",
}

// codes are the CKR_ names the control file accepts (code_names in faultmod.c).
var codes = map[string]uint32{
	"CKR_HOST_MEMORY":              0x02,
	"CKR_GENERAL_ERROR":            0x05,
	"CKR_FUNCTION_FAILED":          0x06,
	"CKR_ARGUMENTS_BAD":            0x07,
	"CKR_DEVICE_ERROR":             0x30,
	"CKR_DEVICE_MEMORY":            0x31,
	"CKR_DEVICE_REMOVED":           0x32,
	"CKR_FUNCTION_CANCELED":        0x50,
	"CKR_KEY_HANDLE_INVALID":       0x60,
	"CKR_OBJECT_HANDLE_INVALID":    0x82,
	"CKR_OPERATION_ACTIVE":         0x90,
	"CKR_PIN_INCORRECT":            0xA0,
	"CKR_PIN_LOCKED":               0xA4,
	"CKR_SESSION_CLOSED":           0xB0,
	"CKR_SESSION_COUNT":            0xB1,
	"CKR_SESSION_HANDLE_INVALID":   0xB3,
	"CKR_TOKEN_NOT_PRESENT":        0xE0,
	"CKR_TOKEN_NOT_RECOGNIZED":     0xE1,
	"CKR_USER_NOT_LOGGED_IN":       0x101,
	"CKR_CRYPTOKI_NOT_INITIALIZED": 0x190,
}

// fields splits like strtok_r(" \t\r") after cutting a "#" comment.
func fields(line string) []string {
	line, _, _ = strings.Cut(line, "#")
	return strings.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == '\t' || r == '\r' })
}

func parseNumber(s string) (uint64, error) {
	if h, ok := strings.CutPrefix(s, "0x"); ok {
		s = h
	} else if h, ok := strings.CutPrefix(s, "0X"); ok {
		s = h
	} else {
		return strconv.ParseUint(s, 10, 64)
	}
	if s == "" || s[0] == '+' || s[0] == '-' {
		return 0, strconv.ErrSyntax
	}
	return strconv.ParseUint(s, 16, 64)
}

func parseFunction(s string) error {
	if s == "*" {
		return nil
	}
	for _, f := range functions {
		if f == s {
			return nil
		}
	}
	return fmt.Errorf("unknown function %q", s)
}

func parseCode(s string) error {
	if _, ok := codes[s]; ok {
		return nil
	}
	v, err := parseNumber(s)
	if err != nil || v == 0 || v > math.MaxUint32 {
		return fmt.Errorf("bad code %q: want a known CKR_ name or a non-zero number", s)
	}
	return nil
}

// checkLine validates one control line and says whether it is a fail line.
func checkLine(line string) (isFail bool, err error) {
	w := fields(line)
	if len(w) == 0 {
		return false, nil
	}
	want := func(usage string) error { return fmt.Errorf("want %q", usage) }
	switch w[0] {
	case "generation":
		return false, errors.New("generation is managed by Control")
	case "latency_us":
		switch len(w) {
		case 2:
			_, err = parseNumber(w[1])
		case 3:
			if err = parseFunction(w[1]); err == nil {
				_, err = parseNumber(w[2])
			}
		default:
			err = want("latency_us [FUNCTION|*] MICROSECONDS")
		}
		return false, err
	case "fail":
		return true, checkFail(w)
	case "hold":
		return false, checkHold(w)
	case "max_sessions":
		if len(w) != 2 {
			return false, want("max_sessions N")
		}
		_, err = parseNumber(w[1])
		return false, err
	case "close_all_sessions", "stats":
		if len(w) != 1 {
			return false, want(w[0])
		}
		return false, nil
	case "personality":
		if len(w) < 2 {
			return false, want("personality NAME...")
		}
		for _, n := range w[1:] {
			if !slices.Contains(Personalities, n) {
				return false, fmt.Errorf("unknown personality %q (want one of %v)", n, Personalities)
			}
		}
		return false, nil
	case "token_gone":
		if len(w) == 1 || (len(w) == 2 && (w[1] == "0" || w[1] == "1")) {
			return false, nil
		}
		if len(w) == 2 {
			return false, parseCode(w[1])
		}
		return false, want("token_gone [0|1|CODE]")
	}
	return false, fmt.Errorf("unknown directive %q", w[0])
}

func checkHold(w []string) error {
	if len(w) < 3 {
		return errors.New(`want "hold FUNCTION|* PATH [every N] [from K] [count C] [after]"`)
	}
	if err := parseFunction(w[1]); err != nil {
		return err
	}
	if w[1] == "C_GetFunctionList" {
		return errors.New("C_GetFunctionList cannot be held")
	}
	if !strings.HasPrefix(w[2], "/") || len(w[2]) >= holdPathMax {
		return fmt.Errorf("hold path %q: want an absolute path shorter than %d bytes", w[2], holdPathMax)
	}
	for i := 3; i < len(w); i += 2 {
		k := w[i]
		if k == "after" {
			i--
			continue
		}
		if i+1 >= len(w) {
			return fmt.Errorf("%s without value", k)
		}
		n, err := parseNumber(w[i+1])
		switch {
		case k != "every" && k != "from" && k != "count":
			return fmt.Errorf("unknown option %q", k)
		case err != nil:
			return fmt.Errorf("%s %q: want a decimal or 0x number", k, w[i+1])
		case n == 0 && k != "count":
			return fmt.Errorf("%s wants a number above 0", k)
		}
	}
	return nil
}

func checkFail(w []string) error {
	if len(w) < 3 {
		return errors.New(`want "fail FUNCTION|* CODE [every N] [from K] [prob P [seed S]] [count C] [after]"`)
	}
	if err := parseFunction(w[1]); err != nil {
		return err
	}
	if w[1] == "C_GetFunctionList" {
		return errors.New("C_GetFunctionList cannot fail")
	}
	if err := parseCode(w[2]); err != nil {
		return err
	}
	for i := 3; i < len(w); i++ {
		k := w[i]
		if k == "after" {
			continue
		}
		if i+1 >= len(w) {
			return fmt.Errorf("%s without value", k)
		}
		v := w[i+1]
		i++
		switch k {
		case "prob":
			p, err := strconv.ParseFloat(v, 64)
			if err != nil || !(p >= 0 && p <= 1) {
				return fmt.Errorf("prob %q: want a number in [0,1]", v)
			}
		case "every", "from", "count", "seed":
			n, err := parseNumber(v)
			if err != nil {
				return fmt.Errorf("%s %q: want a decimal or 0x number", k, v)
			}
			if n == 0 && (k == "every" || k == "from") {
				return fmt.Errorf("%s wants a number above 0", k)
			}
		default:
			return fmt.Errorf("unknown option %q", k)
		}
	}
	return nil
}
