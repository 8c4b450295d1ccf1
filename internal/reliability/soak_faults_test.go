package reliability

// The fault side of TestSoak: a log of the fault phases, which tells a
// worker what faults may explain an error, and the controller that cycles
// through them.

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// soakFault is a set of fault kinds in force during a phase.
type soakFault uint8

const (
	soakDevice  soakFault = 1 << iota // CKR_DEVICE_ERROR on a few % of some calls
	soakLatency                       // every call slowed down
	soakClosed                        // C_CloseAllSessions: session keys lost
	soakGone                          // the token out of its slot, then back (its sessions closed)
)

func (k soakFault) String() string {
	if k == 0 {
		return "none"
	}
	var s []string
	for _, n := range []struct {
		k    soakFault
		name string
	}{{soakDevice, "device errors"}, {soakLatency, "latency"}, {soakClosed, "sessions closed"}, {soakGone, "token gone"}} {
		if k&n.k != 0 {
			s = append(s, n.name)
		}
	}
	return strings.Join(s, "+")
}

// soakDeviceFunctions fail with CKR_DEVICE_ERROR in device phases: every
// call that a session key's life goes through, and the attribute reads of
// a KEK lookup.
var soakDeviceFunctions = []string{
	"C_GenerateKey", "C_GetAttributeValue", "C_Encrypt", "C_Decrypt",
	"C_EncryptUpdate", "C_EncryptFinal", "C_WrapKey", "C_UnwrapKey", "C_DestroyObject",
}

// soakFaults logs the fault phases. A phase is entered in the log before its
// faults are written to the control file, and left (a clean phase entered)
// only after they are cleared, so the phases an operation overlaps cover
// every fault its calls can have met.
type soakFaults struct {
	mu      sync.Mutex
	phases  []soakFault // phase i's faults; phase 0 is clean
	entered map[soakFault]int

	// Events that may destroy session keys (sessions closed, token gone,
	// token back): started counts those begun, done those complete. A key
	// made after event n was done cannot be lost unless event n+1 began.
	started, done atomic.Int64
}

func newSoakFaults() *soakFaults {
	return &soakFaults{phases: []soakFault{0}, entered: map[soakFault]int{}}
}

// soakWindow is where an operation (or a key's life) began.
type soakWindow struct {
	phase int   // index of the phase in force
	done  int64 // key-destroying events complete
}

func (f *soakFaults) window() soakWindow {
	f.mu.Lock()
	defer f.mu.Unlock()
	return soakWindow{phase: len(f.phases) - 1, done: f.done.Load()}
}

func (f *soakFaults) enter(k soakFault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.phases = append(f.phases, k)
	if k != 0 {
		f.entered[k]++
	}
}

// since is every fault in force from w until now.
func (f *soakFaults) since(w soakWindow) soakFault {
	f.mu.Lock()
	defer f.mu.Unlock()
	var k soakFault
	for _, p := range f.phases[w.phase:] {
		k |= p
	}
	return k
}

// mayHaveLost reports whether a key made at born may have been destroyed
// by the token since.
func (f *soakFaults) mayHaveLost(born soakWindow) bool {
	return f.started.Load() > born.done
}

// Closing sessions while a call is inside SoftHSM crashes it now and then
// (see fire in main_test.go); faultmod's close waits until no call is
// inside SoftHSM and lets none in until it is done, so the controller
// needs no timing for it. The close runs in the anchor's C_GetInfo (fire),
// or in a worker's call that loaded the control file first; either way it
// is over when fire returns.

// soakController cycles the faults: clean, device errors, clean, latency,
// clean, sessions closed, clean, token gone and back. Each cycle takes about
// eight phases; the first cycle always runs to its end, later ones stop at
// the deadline. It leaves the token clean.
type soakController struct {
	f        *soakFaults
	phase    time.Duration
	seed     uint64
	cycles   int
	closures int // close_all_sessions fired
	gones    int // token gone and back
	// clean, if not nil, is closed when the first fault may come: the run
	// stays clean until then, however long that takes.
	clean <-chan struct{}
}

func (c *soakController) run(ctx context.Context, deadline time.Time) error {
	sleep := func(d time.Duration) error {
		select {
		case <-time.After(d):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// clean writes no faults and then logs a clean phase.
	clean := func() error {
		if err := env.ctl.Clear(); err != nil {
			return err
		}
		c.f.enter(0)
		return nil
	}
	// during logs k, sets lines, waits d and clears.
	during := func(k soakFault, d time.Duration, lines ...string) error {
		c.f.enter(k)
		if err := env.ctl.Set(lines...); err != nil {
			return err
		}
		if err := sleep(d); err != nil {
			return err
		}
		return clean()
	}
	device := func() error {
		var lines []string
		for i, fn := range soakDeviceFunctions {
			lines = append(lines, fmt.Sprintf("fail %s CKR_DEVICE_ERROR prob 0.03 seed %d", fn, c.seed+uint64(c.cycles*len(soakDeviceFunctions)+i)))
		}
		k := soakDevice
		if c.cycles%2 == 1 {
			k |= soakLatency // every other cycle, slow and failing at once
			lines = append(lines, "latency_us 200")
		}
		return during(k, c.phase, lines...)
	}
	latency := func() error {
		return during(soakLatency, c.phase, "latency_us 300", "latency_us C_UnwrapKey 2000", "latency_us C_GenerateKey 1000")
	}
	closeAll := func() error {
		c.f.enter(soakClosed | soakLatency)
		c.f.started.Add(1)
		if err := fireErr("close_all_sessions"); err != nil {
			return err
		}
		c.closures++
		if err := clean(); err != nil {
			return err
		}
		c.f.done.Add(1)
		return nil
	}
	gone := func() error {
		line := "token_gone 1"
		if c.gones%2 == 1 {
			line = "token_gone CKR_DEVICE_REMOVED"
		}
		c.f.enter(soakGone | soakLatency)
		c.f.started.Add(1)
		if err := env.ctl.Set(line); err != nil {
			return err
		}
		if err := sleep(c.phase / 2); err != nil {
			return err
		}
		// Back: the first call closes every session, as after a restart.
		if err := fireErr(); err != nil {
			return err
		}
		c.gones++
		if err := clean(); err != nil {
			return err
		}
		c.f.done.Add(1)
		return nil
	}
	idle := func() error { return sleep(c.phase) }
	steps := []func() error{idle, device, idle, latency, idle, closeAll, idle, gone}
	defer env.ctl.Clear()
	if c.clean != nil {
		select {
		case <-c.clean:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for ; ; c.cycles++ {
		for _, step := range steps {
			if c.cycles > 0 && time.Now().After(deadline) {
				return nil
			}
			if err := step(); err != nil {
				return err
			}
		}
	}
}

// fireErr is fire for a goroutine other than the test's: it replaces the
// faults and makes one call through the anchor, so that one-shot lines take
// effect now, in this thread.
func fireErr(lines ...string) error {
	if err := env.ctl.Set(lines...); err != nil {
		return err
	}
	if _, err := env.anchor.GetInfo(); err != nil {
		return fmt.Errorf("anchor C_GetInfo: %w", err)
	}
	return nil
}
