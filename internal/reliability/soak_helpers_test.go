package reliability

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/metrics"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/require"
)

// tokenCensus is what the token holds, as the user of this process sees
// it: every token object by class, label and ID, and the number of session
// objects of this process (PKCS#11 v2.40 §4.4).
type tokenCensus struct {
	objects        []string // "class label id", sorted
	byClass        map[string]int
	sessionObjects int
}

var classNames = map[uint]string{
	pkcs11.CKO_DATA: "data", pkcs11.CKO_CERTIFICATE: "certificate", pkcs11.CKO_PUBLIC_KEY: "public key",
	pkcs11.CKO_PRIVATE_KEY: "private key", pkcs11.CKO_SECRET_KEY: "secret key",
}

// census counts the objects on the token in slot through the anchor, logged
// in as the user so that private objects are seen. It must run while no
// provider is open: it logs in and out.
func census(t *testing.T, slot uint) tokenCensus {
	t.Helper()
	a := env.anchor
	h, err := a.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
	require.NoError(t, err)
	defer a.CloseSession(h)
	switch err := a.Login(h, pkcs11.CKU_USER, userPIN); {
	case err == nil:
		defer a.Logout(h)
	case !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)):
		require.NoError(t, err, "census: user login")
	}
	require.NoError(t, a.FindObjectsInit(h, nil))
	var objs []pkcs11.ObjectHandle
	for {
		hs, _, err := a.FindObjects(h, 256)
		require.NoError(t, err)
		if len(hs) == 0 {
			break
		}
		objs = append(objs, hs...)
	}
	require.NoError(t, a.FindObjectsFinal(h))
	c := tokenCensus{byClass: map[string]int{}}
	for _, o := range objs {
		attrs, err := a.GetAttributeValue(h, o, []*pkcs11.Attribute{
			{Type: pkcs11.CKA_TOKEN}, {Type: pkcs11.CKA_CLASS}, {Type: pkcs11.CKA_LABEL}, {Type: pkcs11.CKA_ID},
		})
		require.NoError(t, err)
		if len(attrs[0].Value) == 1 && attrs[0].Value[0] == 0 {
			c.sessionObjects++
			continue
		}
		class, _ := ulongAttr(attrs[1].Value)
		name, ok := classNames[uint(class)]
		if !ok {
			name = fmt.Sprintf("class 0x%X", class)
		}
		c.byClass[name]++
		c.objects = append(c.objects, fmt.Sprintf("%s %q %s", name, attrs[2].Value, hex.EncodeToString(attrs[3].Value)))
	}
	slices.Sort(c.objects)
	return c
}

func ulongAttr(b []byte) (uint64, bool) {
	switch len(b) {
	case 8:
		return binary.NativeEndian.Uint64(b), true
	case 4:
		return uint64(binary.NativeEndian.Uint32(b)), true
	}
	return 0, false
}

// tokenSlot is the slot of the test token.
func tokenSlot(t *testing.T) uint {
	t.Helper()
	slots, err := env.anchor.GetSlotList(true)
	require.NoError(t, err)
	for _, s := range slots {
		ti, err := env.anchor.GetTokenInfo(s)
		require.NoError(t, err)
		if strings.TrimRight(ti.Label, " \x00") == tokenLabel {
			return s
		}
	}
	t.Fatalf("no token %q", tokenLabel)
	return 0
}

// heapWatch samples the Go heap in use (objects and the unused parts of
// their spans, as MemStats.HeapInuse) without stopping the world.
type heapWatch struct {
	stop, done chan struct{}
	peak       uint64
}

func watchHeap(every time.Duration) *heapWatch {
	h := &heapWatch{stop: make(chan struct{}), done: make(chan struct{})}
	samples := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/unused:bytes"}}
	go func() {
		defer close(h.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			metrics.Read(samples)
			h.peak = max(h.peak, samples[0].Value.Uint64()+samples[1].Value.Uint64())
			select {
			case <-tick.C:
			case <-h.stop:
				return
			}
		}
	}()
	return h
}

// Stop ends the sampling and returns the peak.
func (h *heapWatch) Stop() uint64 {
	close(h.stop)
	<-h.done
	return h.peak
}

// heapAfterGC is the heap in use once the garbage is collected.
func heapAfterGC() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// peakRSS is the process's high-water resident set (VmHWM), SoftHSM's C
// heap included; 0 where /proc is missing.
func peakRSS() uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			var kb uint64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
			return kb << 10
		}
	}
	return 0
}

func mib(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
