package reliability

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var (
	soakProcs       = flag.Int("soak.procs", 4, "processes TestSoakProcesses runs on one token")
	soakProcWorkers = flag.Int("soak.procworkers", 8, "goroutines each process of TestSoakProcesses runs")
)

// Environment of a TestSoakProcesses child: its number, and the IDs of the
// KEKs the parent made (hex, comma-separated).
const (
	soakChildEnv = "HSMKEYS_SOAK_CHILD"
	soakKEKsEnv  = "HSMKEYS_SOAK_KEKS"
)

// soakChild reports whether this test binary runs as a TestSoakProcesses
// child; TestMain then makes no token and uses the parent's.
func soakChild() bool { return os.Getenv(soakChildEnv) != "" }

// childStats is what a child prints on its last line.
type childStats struct {
	Ops    map[string]int `json:"ops"`
	Opens  int            `json:"opens"`
	Errors int            `json:"errors"`
}

const childStatsPrefix = "soak-child-stats: "

// TestSoakProcesses: the soak across processes. -soak.procs copies of this
// test binary (TestSoakChild) run at once on the same SoftHSM token, each
// with -soak.procworkers goroutines, for -soak.duration: they open a
// provider, generate, seal and open, export and import, encrypt and decrypt
// for the parent's KEKs, look KEKs up, destroy, close the provider, and
// open it again. There are no injected faults: every error is a failure,
// and SoftHSM's file store under several processes (SoftHSMv2 #757) is
// the fault, hit at each Open (every C_Login rewrites the token file).
// Every result is checked; afterwards each process has no session key
// left before it closes, and the token holds the objects it held before.
//
//	go test -count=1 ./internal/reliability -run TestSoakProcesses -soak.procs 8 -soak.duration 1m
func TestSoakProcesses(t *testing.T) {
	need(t)
	if soakChild() {
		t.Skip("a child runs TestSoakChild")
	}
	slot := tokenSlot(t)
	pristine := census(t, slot)
	t.Cleanup(func() { assert.Equal(t, pristine, census(t, slot), "the token after the KEKs are destroyed") })
	keks := newKEKs(t, kekSpec{"procs-aes", provider.KEKAES256}, kekSpec{"procs-rsa", provider.KEKRSA2048})
	ids := hex.EncodeToString(keks[0].ID) + "," + hex.EncodeToString(keks[1].ID)
	before := census(t, slot)

	type child struct {
		cmd    *exec.Cmd
		out    bytes.Buffer
		stderr bytes.Buffer
	}
	children := make([]*child, *soakProcs)
	for i := range children {
		c := &child{}
		c.cmd = exec.Command(os.Args[0], "-test.run=^TestSoakChild$", "-test.count=1", "-test.v",
			fmt.Sprintf("-soak.duration=%v", *soakDuration), fmt.Sprintf("-soak.procworkers=%d", *soakProcWorkers))
		c.cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d", soakChildEnv, i+1), soakKEKsEnv+"="+ids)
		c.cmd.Stdout, c.cmd.Stderr = &c.out, &c.stderr
		require.NoError(t, c.cmd.Start())
		children[i] = c
	}
	total := childStats{Ops: map[string]int{}}
	for i, c := range children {
		err := c.cmd.Wait()
		if !assert.NoError(t, err, "child %d:\n%s%s", i+1, c.out.String(), c.stderr.String()) {
			continue
		}
		var st childStats
		sc := bufio.NewScanner(&c.out)
		for sc.Scan() {
			if s, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), childStatsPrefix); ok {
				require.NoError(t, json.Unmarshal([]byte(s), &st))
			}
		}
		require.NotNil(t, st.Ops, "child %d printed no stats:\n%s", i+1, c.out.String())
		assert.Positive(t, st.Opens, "child %d never opened the token", i+1)
		total.Opens += st.Opens
		total.Errors += st.Errors
		for k, v := range st.Ops {
			total.Ops[k] += v
		}
	}
	t.Logf("%d processes × %d goroutines, %v: %d opens, operations %v, errors %d",
		*soakProcs, *soakProcWorkers, *soakDuration, total.Opens, total.Ops, total.Errors)
	for _, op := range []string{"generate", "seal", "export", "import", "encrypt", "decrypt", "kek", "destroy"} {
		assert.Positive(t, total.Ops[op], "no %s succeeded", op)
	}
	after := census(t, slot)
	assert.Equal(t, before.objects, after.objects, "token objects before and after")
}

// TestSoakChild is one process of TestSoakProcesses.
func TestSoakChild(t *testing.T) {
	if !soakChild() {
		t.Skip("run by TestSoakProcesses")
	}
	var ids [][]byte
	for _, s := range strings.Split(os.Getenv(soakKEKsEnv), ",") {
		id, err := hex.DecodeString(s)
		require.NoError(t, err)
		ids = append(ids, id)
	}
	require.Len(t, ids, 2)
	cfg := provider.Config{Module: softhsmModule(), TokenLabel: tokenLabel, PIN: provider.PINValue([]byte(userPIN)), MaxSessions: *soakProcWorkers}
	ctx := context.Background()
	st := childStats{Ops: map[string]int{}}
	var mu sync.Mutex
	fail := func(format string, args ...any) {
		mu.Lock()
		st.Errors++
		mu.Unlock()
		t.Errorf(format, args...)
	}
	done := func(op string) {
		mu.Lock()
		st.Ops[op]++
		mu.Unlock()
	}
	deadline := time.Now().Add(*soakDuration)
	for epoch := 0; time.Now().Before(deadline) || epoch == 0; epoch++ {
		// Each epoch opens the token again: C_Initialize, C_Login, the calls
		// that meet other processes' writes.
		p, err := provider.Open(ctx, cfg)
		if err != nil {
			fail("epoch %d: open: %v", epoch, err)
			break
		}
		st.Opens++
		var keks []*provider.KEK
		for _, id := range ids {
			k, err := p.KEKByID(ctx, id)
			if err != nil {
				fail("epoch %d: kek %x: %v", epoch, id, err)
				continue
			}
			keks = append(keks, k)
		}
		if len(keks) == len(ids) {
			var wg sync.WaitGroup
			for w := range *soakProcWorkers {
				r := mrand.New(mrand.NewPCG(uint64(epoch), uint64(w)))
				wg.Go(func() {
					for range 8 {
						if op, err := childStep(ctx, p, keks, r, done); err != nil {
							fail("epoch %d worker %d: %s: %v", epoch, w, op, err)
							return
						}
					}
				})
			}
			wg.Wait()
			if n, err := p.CountSessionKeys(ctx); err != nil || n != 0 {
				fail("epoch %d: %d session keys left (%v)", epoch, n, err)
			}
		}
		if err := p.Close(); err != nil {
			fail("epoch %d: close: %v", epoch, err)
		}
	}
	b, _ := json.Marshal(st)
	fmt.Println(childStatsPrefix + string(b))
}

// errWrong is a result that differs from what was expected.
var errWrong = errors.New("wrong result")

// childStep does one checked operation, calling done with the name of
// each part that succeeded, or returns the name of the part that failed.
func childStep(ctx context.Context, p *provider.Provider, keks []*provider.KEK, r *mrand.Rand, done func(string)) (string, error) {
	msg := make([]byte, 1+r.IntN(4096))
	_, _ = rand.Read(msg)
	switch r.IntN(5) {
	case 0: // generate, seal, open, destroy
		k, err := p.Generate(ctx, provider.AES256)
		if err != nil {
			return "generate", err
		}
		done("generate")
		defer k.Destroy(ctx)
		sealed, err := k.Seal(ctx, msg, []byte("aad"))
		if err != nil {
			return "seal", err
		}
		got, err := k.Open(ctx, sealed, []byte("aad"))
		if err != nil {
			return "seal", err
		}
		if !bytes.Equal(got, msg) {
			return "seal", errWrong
		}
		done("seal")
		if err := k.Destroy(ctx); err != nil {
			return "destroy", err
		}
		if _, err := k.Seal(ctx, msg, nil); !errors.Is(err, provider.ErrKeyDestroyed) {
			return "destroy", fmt.Errorf("%w: seal after destroy: %v", errWrong, err)
		}
		done("destroy")
		return "", nil
	case 1: // export, import, open what the exported key sealed
		k, err := p.Generate(ctx, provider.AES128)
		if err != nil {
			return "generate", err
		}
		defer k.Destroy(ctx)
		sealed, err := k.Seal(ctx, msg, nil)
		if err != nil {
			return "seal", err
		}
		blob, err := p.Export(ctx, k, keks[:1+r.IntN(2)], provider.Options{})
		if err != nil {
			return "export", err
		}
		done("export")
		k2, err := p.Import(ctx, blob, provider.Options{})
		if err != nil {
			return "import", err
		}
		defer k2.Destroy(ctx)
		if k2.ID() != k.ID() {
			return "import", fmt.Errorf("%w: imported key has another id", errWrong)
		}
		got, err := k2.Open(ctx, sealed, nil)
		if err != nil {
			return "import", err
		}
		if !bytes.Equal(got, msg) {
			return "import", errWrong
		}
		done("import")
		return "", nil
	case 2: // encrypt for one or both KEKs, decrypt
		var out bytes.Buffer
		if err := p.Encrypt(ctx, &out, bytes.NewReader(msg), int64(len(msg)), keks[r.IntN(2):], provider.Options{}); err != nil {
			return "encrypt", err
		}
		done("encrypt")
		var got bytes.Buffer
		if err := p.Decrypt(ctx, &got, bytes.NewReader(out.Bytes()), int64(out.Len()), provider.Options{}); err != nil {
			return "decrypt", err
		}
		if !bytes.Equal(got.Bytes(), msg) {
			return "decrypt", errWrong
		}
		done("decrypt")
		return "", nil
	case 3: // kek lookups
		ks, err := p.KEKs(ctx)
		if err != nil {
			return "kek", err
		}
		for _, want := range keks {
			found := false
			for _, k := range ks {
				found = found || bytes.Equal(k.ID, want.ID)
			}
			if !found {
				return "kek", fmt.Errorf("%w: %v not listed", errWrong, want)
			}
		}
		done("kek")
		return "", nil
	default: // a key destroyed with a context that ended
		k, err := p.Generate(ctx, provider.AES128)
		if err != nil {
			return "generate", err
		}
		done("generate")
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := k.Destroy(cctx); err != nil {
			// Every session was busy: the key is kept, and a Destroy
			// that may wait destroys it.
			if !errors.Is(err, context.Canceled) {
				return "destroy ended", err
			}
			if err := k.Destroy(ctx); err != nil {
				return "destroy ended", err
			}
		}
		done("destroy ended")
		return "", nil
	}
}
