package reliability

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

var (
	soakDuration = flag.Duration("soak.duration", 3*time.Second, "how long TestSoak's workers run (at least one full fault cycle)")
	soakWorkers  = flag.Int("soak.workers", 64, "goroutines TestSoak runs")
	soakSeed     = flag.Uint64("soak.seed", 0, "seed of TestSoak's random choices (0: from the clock)")
)

const (
	soakOwnKeys   = 4               // session keys a worker holds at most
	soakOwnBlobs  = 4               // exported keys a worker remembers
	soakShared    = 8               // session keys all workers share
	soakBlobRing  = 32              // exported keys all workers share
	soakBigSize   = 5 << 20         // a large message: beyond Decrypt's 4 MiB one-shot limit
	soakBigAtOnce = 2               // large messages in flight at most
	soakOpTimeout = 2 * time.Minute // no operation may take this long
	soakHeapLimit = 64 << 20        // heap in use after the run, after GC
	soakHeapPeak  = 256 << 20       // heap in use at any time (garbage included)
	soakSampleMax = 256             // plaintext sealed when a key is made
	soakSmallMax  = 64 << 10        // largest small message or Seal
	soakPhaseMin  = 150 * time.Millisecond
	soakPhaseMax  = 3 * time.Second
)

// TestSoak: many goroutines run a mix of Generate, Seal/Open, Export,
// Import, Rewrap, Encrypt/Decrypt (a few messages of 5 MiB, which take the
// streaming path), KEK lookups and Destroy on two providers, for a bounded
// time, while a controller cycles the faults: none, CKR_DEVICE_ERROR on 3%
// of the calls of a session key's life, latency, C_CloseAllSessions, the
// token gone and back.
//
// No operation may return a wrong result: every Open and Decrypt gives back
// what was sealed, every Import a key with the exported key's ID that opens
// what the exported key sealed, a tampered ciphertext never opens. An error
// must be one that a fault in force during the operation explains, and
// typed: ErrKeyLost only for a key made before sessions were last closed,
// ErrTokenUnavailable only while the token was gone, a *provider.TokenError
// with CKR_DEVICE_ERROR only while device errors were injected, and never
// ErrAuthentication, ErrWrappedKeyInvalid or any other sentinel for data
// the test made. Afterwards the token holds exactly the objects it held
// before, no session key, no session faultmod saw opened, no goroutine is
// left, and the heap is back under 64 MiB.
//
// The short run (3 s) is part of the suite. The long run:
//
//	go test -race -count=1 ./internal/reliability -run TestSoak -soak.duration 5m
//
// (add -timeout when -soak.duration nears the default 10 minutes;
// -soak.workers N changes the 64 goroutines, -soak.seed S repeats the
// random choices, though not the timing of the faults). Its multi-process
// mode is TestSoakProcesses (-soak.procs N processes on the same token).
func TestSoak(t *testing.T) {
	need(t)
	defer goleak.VerifyNone(t)
	ctx := context.Background()
	seed := *soakSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("-soak.duration %v -soak.workers %d -soak.seed %d", *soakDuration, *soakWorkers, seed)
	heap0 := heapAfterGC()

	// KEKs first: the SO login cannot coexist with the providers' user
	// login. They are destroyed when the test ends, after the providers
	// are closed; the token is then as it was.
	slot := tokenSlot(t)
	pristine := census(t, slot)
	t.Cleanup(func() { assert.Equal(t, pristine, census(t, slot), "the token after the soak's KEKs are destroyed") })
	keks := newKEKs(t, kekSpec{"soak-aes", provider.KEKAES256}, kekSpec{"soak-aes", provider.KEKAES256}, kekSpec{"soak-rsa", provider.KEKRSA2048})
	aes1, aes2, rsa := keks[0], keks[1], keks[2]

	before := census(t, slot)
	st0 := snapshot(t) // clears the faults
	s := &soakRun{
		f:    newSoakFaults(),
		big:  make(chan struct{}, soakBigAtOnce),
		ids:  [3][]byte{aes1.ID, aes2.ID, rsa.ID},
		aes:  aes2.Label,
		rsaN: rsa.Label,
	}
	defer s.report(t) // also when a require below ends the test
	// Two providers on one token: keys of one are imported by the other,
	// and each sees the other's sessions die.
	s.provs = []*provider.Provider{open(t, 12), open(t, 4)}
	for _, p := range s.provs {
		var ks [3]*provider.KEK
		for i, id := range s.ids {
			k, err := p.KEKByID(ctx, id)
			require.NoError(t, err)
			ks[i] = k
		}
		s.keks = append(s.keks, ks)
	}

	heap := watchHeap(20 * time.Millisecond)
	phase := min(max(*soakDuration/10, soakPhaseMin), soakPhaseMax)
	s.firstBig.Add(min(2, *soakWorkers))
	bigDone := make(chan struct{})
	go func() { s.firstBig.Wait(); close(bigDone) }()
	ctl := &soakController{f: s.f, phase: phase, seed: seed, clean: bigDone}
	ctlCtx, stopCtl := context.WithCancel(ctx)
	defer stopCtl()
	start := time.Now()
	ctlErr := make(chan error, 1)
	go func() { ctlErr <- ctl.run(ctlCtx, start.Add(*soakDuration)) }()

	var wg sync.WaitGroup
	workers := make([]*soakWorker, *soakWorkers)
	for i := range workers {
		w := &soakWorker{s: s, id: i, stats: map[string]int{}}
		w.src = rand.NewChaCha8(seedBytes(seed, uint64(i)))
		w.r = rand.New(rand.NewPCG(seed, uint64(i)))
		workers[i] = w
		wg.Go(w.run)
	}
	err := <-ctlErr // the controller ends, clean, at the deadline or after its first cycle
	s.stop.Store(true)
	wg.Wait()
	elapsed := time.Since(start)
	require.NoError(t, err, "fault controller")
	peak := heap.Stop()

	// Recovered: with the faults off, both providers work, large messages
	// included.
	require.NoError(t, env.ctl.Clear())
	for i, p := range s.provs {
		k, err := p.Generate(ctx, provider.AES256)
		require.NoError(t, err, "provider %d: generate after the soak", i)
		require.NoError(t, roundTrip(ctx, k, "after"), "provider %d", i)
		n, err := p.CountSessionKeys(ctx)
		require.NoError(t, err)
		assert.Positive(t, n)
	}
	last := &soakWorker{s: s, id: -1, stats: map[string]int{}, r: rand.New(rand.NewPCG(seed, 1<<32)), src: rand.NewChaCha8(seedBytes(seed, 1<<32))}
	for range 2 {
		last.message(ctx, true)
	}
	assert.Equal(t, map[string]int{"encrypt big\tok": 2, "decrypt big\tok": 2}, last.stats, "large messages after the soak")
	st1 := snapshot(t)
	for i, p := range s.provs {
		assert.NoError(t, p.Close(), "close provider %d", i)
	}

	// Nothing left behind: sessions, session keys, token objects.
	st2 := snapshot(t)
	assert.Equal(t, st0.OpenSessions, st2.OpenSessions, "sessions open in the module before the soak and after Close")
	q := open(t, 1)
	n, err := q.CountSessionKeys(ctx)
	require.NoError(t, err)
	assert.Zero(t, n, "session keys of this process after Close")
	ks, err := q.KEKs(ctx)
	require.NoError(t, err)
	var good int
	for _, k := range ks {
		if slices.ContainsFunc(s.ids[:], func(id []byte) bool { return bytes.Equal(id, k.ID) }) {
			assert.Empty(t, k.Problems, "%v", k)
			good++
		}
	}
	assert.Equal(t, len(s.ids), good, "the soak's KEKs after the soak")
	require.NoError(t, q.Close())
	assert.Equal(t, st0.OpenSessions, snapshot(t).OpenSessions, "sessions open in the module after the last Close")
	after := census(t, slot)
	assert.Equal(t, before.objects, after.objects, "token objects before and after the soak")
	assert.Zero(t, after.sessionObjects, "session objects after every provider is closed")

	heapEnd := heapAfterGC()

	// The numbers.
	total := map[string]int{}
	for _, w := range workers {
		for k, v := range w.stats {
			total[k] += v
		}
	}
	ops, errs := map[string]int{}, map[string]int{}
	var nops int
	for k, v := range total {
		op, class, _ := strings.Cut(k, "\t")
		nops += v
		if class == "ok" {
			ops[op] += v
		} else {
			errs[class] += v
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d operations in %v (%.0f/s), %d fault cycles (phase %v), %d sessions-closed and %d token-gone events\n",
		nops, elapsed.Round(time.Millisecond), float64(nops)/elapsed.Seconds(), ctl.cycles, phase, ctl.closures, ctl.gones)
	for _, k := range slices.Sorted(maps.Keys(total)) {
		op, class, _ := strings.Cut(k, "\t")
		fmt.Fprintf(&b, "  %-18s %-30s %7d\n", op, class, total[k])
	}
	fmt.Fprintf(&b, "errors by kind:")
	for _, k := range slices.Sorted(maps.Keys(errs)) {
		fmt.Fprintf(&b, " %s %d;", k, errs[k])
	}
	fmt.Fprintf(&b, "\nfaults injected by faultmod:")
	for _, fn := range slices.Sorted(maps.Keys(st1.Injected)) {
		if d := st1.Injected[fn] - st0.Injected[fn]; d > 0 {
			fmt.Fprintf(&b, " %s %d;", fn, d)
		}
	}
	fmt.Fprintf(&b, "\nsessions in the module: %d before, %d after Close; C_Login calls %d, C_OpenSession %d",
		st0.OpenSessions, st2.OpenSessions, st2.Calls["C_Login"]-st0.Calls["C_Login"], st2.Calls["C_OpenSession"]-st0.Calls["C_OpenSession"])
	fmt.Fprintf(&b, "\nheap in use: %s before, peak %s, %s after GC; peak RSS %s (SoftHSM included)\n",
		mib(heap0), mib(peak), mib(heapEnd), mib(peakRSS()))
	fmt.Fprintf(&b, "token objects: %v", before.byClass)
	t.Log(b.String())

	// Every kind of fault took effect, and the work got done.
	var device uint64
	for _, fn := range soakDeviceFunctions {
		device += st1.Injected[fn] - st0.Injected[fn]
	}
	assert.Positive(t, device, "no device error was injected")
	assert.Positive(t, ctl.closures, "sessions were never closed")
	assert.Positive(t, ctl.gones, "the token never went away")
	assert.Positive(t, errs["key lost"], "no key was lost: the sessions-closed events did nothing")
	for _, op := range []string{"generate", "seal", "open", "open sample", "tamper", "export", "import", "open imported",
		"rewrap", "import rewrapped", "open rewrapped", "encrypt", "decrypt", "encrypt big", "destroy", "kek", "count"} {
		assert.Positive(t, ops[op], "no %s succeeded", op)
	}
	var big int
	for k, v := range total {
		if strings.HasPrefix(k, "decrypt big\t") {
			big += v
		}
	}
	assert.Positive(t, big, "no large message was decrypted during the soak")
	assert.Less(t, heapEnd, uint64(soakHeapLimit), "heap in use after the soak")
	assert.Less(t, peak, uint64(soakHeapPeak), "peak heap in use during the soak")
}

// soakRun is the state the workers share.
type soakRun struct {
	f     *soakFaults
	provs []*provider.Provider
	keks  [][3]*provider.KEK // per provider: aes v1, aes v2, rsa
	ids   [3][]byte
	aes   string // KEK names
	rsaN  string
	big   chan struct{} // a slot per large message in flight
	// firstBig is done when the workers that start with a large message
	// have made it. The first fault waits for that: on a busy machine a
	// large message takes long, and one that always met a fault would leave
	// the streaming path untested.
	firstBig sync.WaitGroup

	shared [soakShared]atomic.Pointer[soakKey]
	blobs  [soakBlobRing]atomic.Pointer[soakBlob]

	stop      atomic.Bool
	failMu    sync.Mutex
	failures  []string       // the first two of each kind
	failKinds map[string]int // failures by kind
	nfail     atomic.Int64
}

// report fails t with the operations that went wrong, by kind.
func (s *soakRun) report(t *testing.T) {
	s.failMu.Lock()
	defer s.failMu.Unlock()
	if s.nfail.Load() == 0 {
		return
	}
	var kinds strings.Builder
	for _, k := range slices.Sorted(maps.Keys(s.failKinds)) {
		fmt.Fprintf(&kinds, "  %5d  %s\n", s.failKinds[k], k)
	}
	t.Errorf("%d operations went wrong, by kind:\n%s\nexamples:\n%s", s.nfail.Load(), kinds.String(), strings.Join(s.failures, "\n"))
}

func (s *soakRun) fail(format string, args ...any) {
	s.failKind("", format, args...)
}

// failKind records a failure; kind groups like ones in the report.
func (s *soakRun) failKind(kind, format string, args ...any) {
	s.nfail.Add(1)
	s.failMu.Lock()
	defer s.failMu.Unlock()
	if kind == "" {
		kind = fmt.Sprintf(format, args...)
		if i := strings.IndexByte(kind, ':'); i >= 0 && strings.HasPrefix(kind, "worker ") {
			kind = kind[i+2:]
		}
		kind = strings.SplitN(kind, "\n", 2)[0]
	}
	if s.failKinds == nil {
		s.failKinds = map[string]int{}
	}
	if s.failKinds[kind]++; s.failKinds[kind] <= 2 {
		s.failures = append(s.failures, fmt.Sprintf(format, args...))
	}
}

// errKind names the sentinel or CKR_* code of an error, for grouping.
func errKind(err error) string {
	var kinds []string
	for _, e := range []error{
		provider.ErrKeyLost, provider.ErrTokenUnavailable, provider.ErrKeyDestroyed, provider.ErrAuthentication,
		provider.ErrWrappedKeyInvalid, provider.ErrPolicy, provider.ErrNotFound, provider.ErrMalformed,
		provider.ErrContext, provider.ErrInvalidInput, provider.ErrClosed, provider.ErrUnsupported, context.DeadlineExceeded,
	} {
		if errors.Is(err, e) {
			kinds = append(kinds, fmt.Sprintf("%q", e))
		}
	}
	var te *provider.TokenError
	if errors.As(err, &te) {
		kinds = append(kinds, te.Op+" "+strings.Fields(te.Error())[1])
	}
	if len(kinds) == 0 {
		return "other"
	}
	return strings.Join(kinds, ", ")
}

// soakKey is a session key with what the test knows about it.
type soakKey struct {
	k    *provider.Key
	p    int        // index of its provider
	born soakWindow // from here the token may have destroyed it
	// A message sealed when the key was made or imported, so that every
	// copy of the key can be checked; nil if that seal failed.
	pt, aad, sealed []byte
	// destroying: a worker is destroying this shared key; others may get
	// ErrKeyDestroyed.
	destroying atomic.Bool
}

// soakBlob is an exported key with the sample of the key it holds.
type soakBlob struct {
	data            []byte
	ctx             map[string]string
	id              [16]byte
	pt, aad, sealed []byte
	recipients      int
}

type soakWorker struct {
	s     *soakRun
	id    int
	r     *rand.Rand
	src   *rand.ChaCha8
	own   []*soakKey
	blobs []*soakBlob
	stats map[string]int // "op\tclass" -> count
	// bigDone: the worker made its first large message (workers 0 and 1
	// start with one, so that even a short run streams).
	bigDone bool
}

func seedBytes(seed, n uint64) (b [32]byte) {
	for i := range 4 {
		v := seed*uint64(2*i+1) + n*0x9e3779b97f4a7c15
		for j := range 8 {
			b[8*i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

func (w *soakWorker) run() {
	for !w.s.stop.Load() {
		if !w.step() {
			return
		}
	}
	// The keys still held are left to Close.
}

// step runs one random operation; false after a panic.
func (w *soakWorker) step() (ok bool) {
	defer func() {
		if r := recover(); r != nil {
			w.s.fail("worker %d: panic: %v\n%s", w.id, r, debug.Stack())
			ok = false
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), soakOpTimeout)
	defer cancel()
	// The first two workers start with a large message, so that even a
	// short run takes the streaming path; the faults wait for them.
	if w.id < 2 && !w.bigDone {
		w.bigDone = true
		defer w.s.firstBig.Done()
		w.message(ctx, true)
		return true
	}
	switch n := w.r.IntN(1000); {
	case n < 80:
		w.generate(ctx)
	case n < 280:
		if sk := w.ownKey(); sk != nil {
			w.sealOpen(ctx, sk, -1)
		} else {
			w.generate(ctx)
		}
	case n < 430:
		w.shared(ctx)
	case n < 530:
		w.export(ctx)
	case n < 630:
		w.importBlob(ctx)
	case n < 680:
		w.rewrap(ctx)
	case n < 760:
		w.message(ctx, false)
	case n < 763:
		w.message(ctx, true)
	case n < 830:
		if len(w.own) > 0 {
			i := w.r.IntN(len(w.own))
			sk := w.own[i]
			w.own = slices.Delete(w.own, i, i+1)
			w.destroy(ctx, sk)
		}
	case n < 880:
		w.kekLookup(ctx)
	case n < 900:
		w.count(ctx)
	default:
		if sk := w.ownKey(); sk != nil {
			w.sealOpen(ctx, sk, -1)
		}
	}
	return true
}

// check judges the error of an operation: it counts it by class and
// records a failure unless a fault in force during the operation explains
// it. op is when the operation began; born is when the key it used was
// made (op itself for a key the operation makes); sk is the shared key
// used, if any. It reports whether err is nil.
func (w *soakWorker) check(what string, err error, op, born soakWindow, sk *soakKey) bool {
	class, why := w.s.classify(err, op, born, sk)
	w.stats[what+"\t"+class]++
	if class == "token unavailable" {
		time.Sleep(5 * time.Millisecond) // as a client would, rather than spin
	}
	if why != "" {
		w.s.failKind(what+": "+errKind(err)+": "+strings.SplitN(why, " (", 2)[0], "worker %d: %s: %v: %s", w.id, what, err, why)
	}
	return err == nil
}

// classify names the class of err and, if no fault explains it, why not.
func (s *soakRun) classify(err error, op, born soakWindow, sk *soakKey) (class, why string) {
	if err == nil {
		return "ok", ""
	}
	faults := s.f.since(op)
	for _, never := range []error{
		provider.ErrAuthentication, provider.ErrWrappedKeyInvalid, provider.ErrMalformed, provider.ErrContext,
		provider.ErrPolicy, provider.ErrInvalidInput, provider.ErrNotFound, provider.ErrClosed,
		provider.ErrUnsupported, provider.ErrKeyExhausted, provider.ErrConfig,
	} {
		if errors.Is(err, never) {
			return "unexpected", fmt.Sprintf("%q for data the test made (faults: %v)", never, faults)
		}
	}
	switch {
	case errors.Is(err, provider.ErrKeyDestroyed):
		if sk != nil && sk.destroying.Load() {
			return "destroyed by another worker", ""
		}
		return "unexpected", "a key nobody destroyed"
	case errors.Is(err, provider.ErrKeyLost):
		if !s.f.mayHaveLost(born) {
			return "unexpected", fmt.Sprintf("no sessions were closed since the key was made (faults: %v)", faults)
		}
		if errors.Is(err, provider.ErrTokenUnavailable) && faults&soakGone == 0 {
			return "unexpected", fmt.Sprintf("token unavailable, but it never left (faults: %v)", faults)
		}
		return "key lost", ""
	case errors.Is(err, provider.ErrTokenUnavailable):
		if faults&soakGone == 0 {
			return "unexpected", fmt.Sprintf("token unavailable, but it never left (faults: %v)", faults)
		}
		return "token unavailable", ""
	}
	if code, ok := tokenCode(err); ok && code == pkcs11.CKR_DEVICE_ERROR {
		if faults&soakDevice == 0 {
			return "unexpected", fmt.Sprintf("a device error none was injected for (faults: %v)", faults)
		}
		return "device error", ""
	}
	return "unexpected", fmt.Sprintf("not an error any fault explains (faults: %v)", faults)
}

// lost forgets a key the token dropped; destroying it must succeed.
func (w *soakWorker) lost(ctx context.Context, sk *soakKey, err error) {
	if !errors.Is(err, provider.ErrKeyLost) {
		return
	}
	if i := slices.Index(w.own, sk); i >= 0 {
		w.own = slices.Delete(w.own, i, i+1)
	}
	if err := sk.k.Destroy(ctx); err != nil {
		w.s.fail("worker %d: destroy a lost key: %v", w.id, err)
	}
}

func (w *soakWorker) provider() int {
	if w.r.IntN(4) == 0 {
		return 1
	}
	return 0
}

func (w *soakWorker) bytes(n int) []byte {
	b := make([]byte, n)
	w.src.Read(b)
	return b
}

// size is a random message size: mostly up to 1 KiB, sometimes up to 64 KiB.
func (w *soakWorker) size() int {
	if w.r.IntN(8) == 0 {
		return w.r.IntN(soakSmallMax + 1)
	}
	return w.r.IntN(1025)
}

func (w *soakWorker) aad() []byte {
	if w.r.IntN(3) == 0 {
		return nil
	}
	return w.bytes(1 + w.r.IntN(64))
}

func (w *soakWorker) context() map[string]string {
	if w.r.IntN(2) == 0 {
		return nil
	}
	return map[string]string{"worker": fmt.Sprint(w.id), "n": fmt.Sprint(w.r.Uint32())}
}

// recipients picks one or two KEKs of provider p to export to.
func (w *soakWorker) recipients(p int) []*provider.KEK {
	k := w.s.keks[p]
	switch w.r.IntN(5) {
	case 0:
		return []*provider.KEK{k[0]}
	case 1:
		return []*provider.KEK{k[2]}
	case 2:
		return []*provider.KEK{k[1], k[2]}
	case 3:
		return []*provider.KEK{k[0], k[1]}
	}
	return []*provider.KEK{k[1]}
}

func (w *soakWorker) ownKey() *soakKey {
	if len(w.own) == 0 {
		return nil
	}
	return w.own[w.r.IntN(len(w.own))]
}

// newKey generates a key on a random provider and seals its sample.
func (w *soakWorker) newKey(ctx context.Context) *soakKey {
	pi := w.provider()
	alg := provider.AES256
	if w.r.IntN(4) == 0 {
		alg = provider.AES128
	}
	win := w.s.f.window()
	k, err := w.s.provs[pi].Generate(ctx, alg)
	if !w.check("generate", err, win, win, nil) {
		return nil
	}
	if k.Algorithm() != alg {
		w.s.fail("worker %d: generate %v gave a %v key", w.id, alg, k.Algorithm())
	}
	sk := &soakKey{k: k, p: pi, born: win}
	pt, aad := w.bytes(w.r.IntN(soakSampleMax)), w.aad()
	sealed, err := k.Seal(ctx, pt, aad)
	if w.check("seal", err, win, win, nil) {
		sk.pt, sk.aad, sk.sealed = pt, aad, sealed
	} else if errors.Is(err, provider.ErrKeyLost) {
		w.lost(ctx, sk, err)
		return nil
	}
	return sk
}

func (w *soakWorker) generate(ctx context.Context) {
	sk := w.newKey(ctx)
	if sk == nil {
		return
	}
	if len(w.own) >= soakOwnKeys {
		old := w.own[0]
		w.own = w.own[1:]
		w.destroy(ctx, old)
	}
	w.own = append(w.own, sk)
}

// destroy destroys a key this worker alone holds; afterwards every use
// must say ErrKeyDestroyed.
func (w *soakWorker) destroy(ctx context.Context, sk *soakKey) {
	win := w.s.f.window()
	err := sk.k.Destroy(ctx)
	w.check("destroy", err, win, sk.born, nil)
	_, err = sk.k.Seal(ctx, []byte("after destroy"), nil)
	if !errors.Is(err, provider.ErrKeyDestroyed) {
		w.s.fail("worker %d: seal after destroy: %v, want ErrKeyDestroyed", w.id, err)
	}
}

// sealOpen seals a fresh message and opens it, opens the key's sample, and
// now and then a tampered ciphertext. slot is the shared slot of sk, or -1.
func (w *soakWorker) sealOpen(ctx context.Context, sk *soakKey, slot int) {
	var shared *soakKey
	if slot >= 0 {
		shared = sk
	}
	done := func(err error) {
		if !errors.Is(err, provider.ErrKeyLost) {
			return
		}
		if slot < 0 {
			w.lost(ctx, sk, err)
		} else if w.s.shared[slot].CompareAndSwap(sk, nil) {
			sk.destroying.Store(true)
			if err := sk.k.Destroy(ctx); err != nil {
				w.s.fail("worker %d: destroy a lost shared key: %v", w.id, err)
			}
		}
	}
	win := w.s.f.window()
	pt, aad := w.bytes(w.size()), w.aad()
	sealed, err := sk.k.Seal(ctx, pt, aad)
	if !w.check("seal", err, win, sk.born, shared) {
		done(err)
		return
	}
	if len(sealed) != len(pt)+provider.Overhead {
		w.s.fail("worker %d: seal of %d bytes gave %d", w.id, len(pt), len(sealed))
	}
	got, err := sk.k.Open(ctx, sealed, aad)
	if !w.check("open", err, win, sk.born, shared) {
		done(err)
		return
	}
	if !bytes.Equal(got, pt) {
		w.s.fail("worker %d: open: %v (%d bytes sealed, %d opened)", w.id, errMismatch, len(pt), len(got))
	}
	if sk.sealed != nil {
		got, err := sk.k.Open(ctx, sk.sealed, sk.aad)
		if !w.check("open sample", err, win, sk.born, shared) {
			done(err)
			return
		}
		if !bytes.Equal(got, sk.pt) {
			w.s.fail("worker %d: open sample: %v", w.id, errMismatch)
		}
	}
	if w.r.IntN(6) == 0 {
		bad := bytes.Clone(sealed)
		bad[w.r.IntN(len(bad))] ^= 1 << w.r.IntN(8)
		got, err := sk.k.Open(ctx, bad, aad)
		switch {
		case err == nil:
			w.s.fail("worker %d: a tampered ciphertext opened (%d bytes)", w.id, len(got))
		case errors.Is(err, provider.ErrAuthentication):
			w.stats["tamper\tok"]++
			if got != nil {
				w.s.fail("worker %d: a tampered ciphertext gave %d bytes with its error", w.id, len(got))
			}
		default:
			w.check("tamper", err, win, sk.born, shared)
			done(err)
		}
	}
}

// shared uses, makes or replaces one of the shared keys.
func (w *soakWorker) shared(ctx context.Context) {
	slot := w.r.IntN(soakShared)
	sk := w.s.shared[slot].Load()
	if sk != nil && w.r.IntN(20) != 0 {
		w.sealOpen(ctx, sk, slot)
		return
	}
	nk := w.newKey(ctx)
	if nk == nil {
		return
	}
	old := w.s.shared[slot].Swap(nk)
	if old == nil {
		return
	}
	old.destroying.Store(true)
	win := w.s.f.window()
	w.check("destroy", old.k.Destroy(ctx), win, old.born, old)
}

// export exports one of this worker's keys, or a shared one, and keeps the
// blob for imports.
func (w *soakWorker) export(ctx context.Context) {
	sk, slot := w.ownKey(), -1
	if sk == nil || w.r.IntN(3) == 0 {
		slot = w.r.IntN(soakShared)
		sk = w.s.shared[slot].Load()
	}
	if sk == nil || sk.sealed == nil {
		return
	}
	var shared *soakKey
	if slot >= 0 {
		shared = sk
	}
	to := w.recipients(sk.p)
	o := provider.Options{Context: w.context(), Armor: w.r.IntN(4) == 0}
	win := w.s.f.window()
	blob, err := w.s.provs[sk.p].Export(ctx, sk.k, to, o)
	if !w.check("export", err, win, sk.born, shared) {
		if slot < 0 {
			w.lost(ctx, sk, err)
		}
		return
	}
	b := &soakBlob{data: blob, ctx: o.Context, id: sk.k.ID(), pt: sk.pt, aad: sk.aad, sealed: sk.sealed, recipients: len(to)}
	w.inspect("export", b)
	w.keep(b)
}

// inspect checks what a blob says about itself, without a token.
func (w *soakWorker) inspect(what string, b *soakBlob) {
	info, err := provider.Inspect(b.data)
	if err != nil {
		w.s.fail("worker %d: inspect after %s: %v", w.id, what, err)
		return
	}
	if info.Kind != "key" || len(info.Recipients) != b.recipients {
		w.s.fail("worker %d: inspect after %s: kind %q, %d recipients, want key and %d", w.id, what, info.Kind, len(info.Recipients), b.recipients)
	}
}

func (w *soakWorker) keep(b *soakBlob) {
	if len(w.blobs) >= soakOwnBlobs {
		w.blobs = w.blobs[1:]
	}
	w.blobs = append(w.blobs, b)
	w.s.blobs[w.r.IntN(soakBlobRing)].Store(b)
}

func (w *soakWorker) blob() *soakBlob {
	if len(w.blobs) > 0 && w.r.IntN(2) == 0 {
		return w.blobs[w.r.IntN(len(w.blobs))]
	}
	return w.s.blobs[w.r.IntN(soakBlobRing)].Load()
}

// importBlob imports an exported key on a random provider and checks it.
func (w *soakWorker) importBlob(ctx context.Context) {
	b := w.blob()
	if b == nil {
		return
	}
	pi := w.provider()
	win := w.s.f.window()
	k, err := w.s.provs[pi].Import(ctx, b.data, provider.Options{Context: b.ctx})
	if !w.check("import", err, win, win, nil) {
		return
	}
	w.imported(ctx, "open imported", pi, k, b, win)
}

// imported checks a key imported from b: its ID, and that it opens the
// sample the exported key sealed. Then it keeps the key or destroys it.
func (w *soakWorker) imported(ctx context.Context, what string, pi int, k *provider.Key, b *soakBlob, win soakWindow) {
	sk := &soakKey{k: k, p: pi, born: win, pt: b.pt, aad: b.aad, sealed: b.sealed}
	if k.ID() != b.id {
		w.s.fail("worker %d: %s: the imported key's ID %x is not the exported key's %x", w.id, what, k.ID(), b.id)
	}
	got, err := k.Open(ctx, b.sealed, b.aad)
	if !w.check(what, err, win, win, nil) {
		if errors.Is(err, provider.ErrKeyLost) {
			w.lost(ctx, sk, err)
		} else {
			w.destroy(ctx, sk)
		}
		return
	}
	if !bytes.Equal(got, b.pt) {
		w.s.fail("worker %d: %s: the imported key opens the exported key's message to another plaintext", w.id, what)
	}
	if len(w.own) < soakOwnKeys && w.r.IntN(2) == 0 {
		w.own = append(w.own, sk)
		return
	}
	w.destroy(ctx, sk)
}

// rewrap rewraps an exported key to other KEKs, then imports the result.
func (w *soakWorker) rewrap(ctx context.Context) {
	b := w.blob()
	if b == nil {
		return
	}
	pi := w.provider()
	k := w.s.keks[pi]
	var to []*provider.KEK
	switch w.r.IntN(3) {
	case 0:
		to = []*provider.KEK{k[1]}
	case 1:
		to = []*provider.KEK{k[2]}
	default:
		to = []*provider.KEK{k[1], k[2]}
	}
	win := w.s.f.window()
	data, err := w.s.provs[pi].Rewrap(ctx, b.data, to, provider.Options{Context: b.ctx})
	if !w.check("rewrap", err, win, win, nil) {
		return
	}
	nb := &soakBlob{data: data, ctx: b.ctx, id: b.id, pt: b.pt, aad: b.aad, sealed: b.sealed, recipients: len(to)}
	w.inspect("rewrap", nb)
	qi := w.provider()
	win = w.s.f.window()
	nk, err := w.s.provs[qi].Import(ctx, data, provider.Options{Context: b.ctx})
	if !w.check("import rewrapped", err, win, win, nil) {
		return
	}
	w.imported(ctx, "open rewrapped", qi, nk, nb, win)
	w.keep(nb)
}

// message encrypts a message on one provider and decrypts it on another
// (or the same). A large one is generated from a seed as it is encrypted,
// and generated again to check what Decrypt writes, so that only its
// ciphertext is held.
func (w *soakWorker) message(ctx context.Context, large bool) {
	if large {
		select {
		case w.s.big <- struct{}{}:
			defer func() { <-w.s.big }()
		default:
			large = false
		}
	}
	pi, qi := w.provider(), w.provider()
	to := w.recipients(pi)
	o := provider.Options{Context: w.context()}
	enc, dec := "encrypt", "decrypt"
	var (
		plaintext func() io.Reader
		size      int64
		ct        bytes.Buffer
	)
	if large {
		enc, dec = "encrypt big", "decrypt big"
		size = int64(soakBigSize + w.r.IntN(4096))
		seed := seedBytes(w.r.Uint64(), 1)
		plaintext = func() io.Reader { return io.LimitReader(rand.NewChaCha8(seed), size) }
		ct.Grow(int(size) + 64<<10)
	} else {
		pt := w.bytes(w.size())
		plaintext = func() io.Reader { return bytes.NewReader(pt) }
		size = int64(len(pt))
		o.Armor = w.r.IntN(4) == 0
	}
	announced := size
	if !large && w.r.IntN(5) == 0 {
		announced = -1 // indefinite length, as openssl -stream writes
	}
	win := w.s.f.window()
	err := w.s.provs[pi].Encrypt(ctx, &ct, plaintext(), announced, to, o)
	if !w.check(enc, err, win, win, nil) {
		return
	}
	out := &prefixWriter{want: plaintext()}
	win = w.s.f.window()
	err = w.s.provs[qi].Decrypt(ctx, out, bytes.NewReader(ct.Bytes()), int64(ct.Len()), o)
	if out.wrong {
		w.s.fail("worker %d: %s: %v (%v)", w.id, dec, errMismatch, err)
	}
	if !w.check(dec, err, win, win, nil) {
		// A message Decrypt checks in one call gets nothing or all; a
		// large one is written in a second pass after its tag was checked,
		// and a failure there leaves an authentic prefix in dst
		// (TestDecryptStreamFails).
		if out.n > 0 && !large {
			w.s.fail("worker %d: %s wrote %d bytes of plaintext, then failed: %v", w.id, dec, out.n, err)
		}
		if out.n > 0 {
			w.stats[dec+" partial\tbytes written, then error"]++
		}
		return
	}
	if out.n != size {
		w.s.fail("worker %d: %s: %d bytes encrypted, %d decrypted", w.id, dec, size, out.n)
	}
}

// prefixWriter checks that what is written to it is a prefix of want.
type prefixWriter struct {
	want  io.Reader
	buf   []byte
	n     int64
	wrong bool
}

func (w *prefixWriter) Write(b []byte) (int, error) {
	if cap(w.buf) < len(b) {
		w.buf = make([]byte, len(b))
	}
	exp := w.buf[:len(b)]
	if _, err := io.ReadFull(w.want, exp); err != nil || !bytes.Equal(exp, b) {
		w.wrong = true
	}
	w.n += int64(len(b))
	return len(b), nil
}

// kekLookup finds the newest version of each KEK by name, on the token.
func (w *soakWorker) kekLookup(ctx context.Context) {
	p := w.s.provs[w.provider()]
	for _, q := range []struct {
		name string
		id   []byte
	}{{w.s.aes, w.s.ids[1]}, {w.s.rsaN, w.s.ids[2]}} {
		win := w.s.f.window()
		k, err := p.KEK(ctx, q.name)
		if !w.check("kek", err, win, win, nil) {
			return
		}
		if !bytes.Equal(k.ID, q.id) {
			w.s.fail("worker %d: kek %q: found %v, want id %x", w.id, q.name, k, q.id)
		}
	}
}

// count counts the session keys of the process (a search on the token).
func (w *soakWorker) count(ctx context.Context) {
	win := w.s.f.window()
	_, err := w.s.provs[w.provider()].CountSessionKeys(ctx)
	w.check("count", err, win, win, nil)
}
