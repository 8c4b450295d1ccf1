package provider

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// signalHandler is a slog handler that writes JSON to a buffer and
// closes a channel when a record with a given message arrives, so that a
// test waits for the event, not for a time.
type signalHandler struct {
	slog.Handler
	mu   *sync.Mutex
	on   map[string]chan struct{}
	seen map[string]bool
}

func (h signalHandler) Handle(ctx context.Context, r slog.Record) error {
	h.mu.Lock()
	if ch, ok := h.on[r.Message]; ok && !h.seen[r.Message] {
		h.seen[r.Message] = true
		close(ch)
	}
	h.mu.Unlock()
	return h.Handler.Handle(ctx, r)
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestLoggerAndMetrics: with a logger and metrics set, the provider
// reports its pool waits, retries, lost keys and restored logins, and the
// log holds no PIN and no key-ish bytes.
func TestLoggerAndMetrics(t *testing.T) {
	a := openAdmin(t)
	kek := makeKEK(t, a, uniqueName(t, "observe"), KEKAES256)

	var logs syncBuffer
	waiting := make(chan struct{})
	h := signalHandler{
		Handler: slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}),
		mu:      &sync.Mutex{},
		on:      map[string]chan struct{}{"hsmkeys: every session is in use; waiting for one": waiting},
		seen:    map[string]bool{},
	}
	var waits, retries, lost, relogins atomic.Int64
	var retryOps sync.Map
	p := openProvider(t, func(c *Config) {
		c.MaxSessions = 1
		c.Logger = slog.New(h)
		c.Metrics = &Metrics{
			PoolWait: func(d time.Duration) { waits.Add(1) },
			Retry: func(op string, code uint) {
				retries.Add(1)
				retryOps.Store(op+" "+codeName(code), true)
			},
			KeyLost: func() { lost.Add(1) },
			Relogin: func() { relogins.Add(1) },
		}
	})
	kek = mustKEK(t, p, kek)

	// Work that touches every kind of secret: plaintext, sealed data, an
	// exported key, a message.
	k, err := p.Generate(bg, AES256)
	require.NoError(t, err)
	plaintext := []byte("observe-plaintext-0123456789abcdef")
	sealed, err := k.Seal(bg, plaintext, []byte("aad"))
	require.NoError(t, err)
	_, err = k.Open(bg, sealed, []byte("aad"))
	require.NoError(t, err)
	blob, err := p.Export(bg, k, []*KEK{kek}, Options{})
	require.NoError(t, err)
	back, err := p.Import(bg, blob, Options{})
	require.NoError(t, err)
	require.NoError(t, back.Destroy(bg))
	var msg bytes.Buffer
	require.NoError(t, p.Encrypt(bg, &msg, bytes.NewReader(plaintext), UnknownSize, []*KEK{kek}, Options{}))

	// A wait: the writer holds the only session until Close.
	w, err := p.NewEncrypter(bg, &bytes.Buffer{}, []*KEK{kek}, Options{})
	require.NoError(t, err)
	gen := make(chan error, 1)
	go func() {
		k, err := p.Generate(bg, AES128)
		if err == nil {
			err = k.Destroy(bg)
		}
		gen <- err
	}()
	<-waiting // the Generate is waiting for the session
	require.NoError(t, w.Close())
	require.NoError(t, <-gen)
	assert.GreaterOrEqual(t, waits.Load(), int64(1), "a wait for the session (the writer's Close and the Generate may wait for each other too)")

	// A lost key and a restored login: every session closed under us.
	raw := openRaw(t)
	require.NoError(t, raw.ctx.CloseAllSessions(tok.slot))
	_, err = k.Seal(bg, plaintext, nil)
	require.ErrorIs(t, err, ErrKeyLost)
	k2, err := p.Generate(bg, AES128)
	require.NoError(t, err, "a new key after a new login")
	require.NoError(t, k2.Destroy(bg))
	assert.EqualValues(t, 1, lost.Load(), "one key lost")
	assert.GreaterOrEqual(t, relogins.Load(), int64(1), "the login was restored")
	assert.GreaterOrEqual(t, retries.Load(), int64(1), "the seal on a dead session was tried again")
	_, ok := retryOps.Load("C_EncryptInit CKR_SESSION_HANDLE_INVALID")
	assert.True(t, ok, "the retry names the call and code")
	require.NoError(t, p.Close())

	out := logs.String()
	for _, m := range []string{"token opened", "waiting for one", "waited for a session", "trying again",
		"session key lost", "logged in again", "provider closed"} {
		assert.Contains(t, out, m)
	}
	// Nothing secret, in any encoding.
	secrets := map[string][]byte{"pin": []byte(tok.userPIN), "plaintext": plaintext, "sealed": sealed,
		"sealed tag": sealed[len(sealed)-16:], "blob": blob[len(blob)-48:]}
	for name, b := range secrets {
		for _, enc := range []string{string(b), hex.EncodeToString(b), strings.ToUpper(hex.EncodeToString(b)),
			base64.StdEncoding.EncodeToString(b), base64.RawStdEncoding.EncodeToString(b)} {
			assert.NotContains(t, out, enc, "%s in the log", name)
		}
	}
	assert.NotRegexp(t, regexp.MustCompile(`[0-9a-fA-F]{32,}`), out, "no key-sized hex in the log")
	assert.NotRegexp(t, regexp.MustCompile(`[A-Za-z0-9+/]{32,}`), out, "no key-sized base64 in the log")
}

// TestObserverUnset: without a logger or metrics there is no observer:
// the hot path pays one nil check.
func TestObserverUnset(t *testing.T) {
	p := openProvider(t)
	assert.Nil(t, p.obs)
	// And nil hooks are safe everywhere they are called.
	var o *observer
	o.retry(ErrTokenBusy, 2)
	o.keyLost(&Key{})
	o.opened(p, 1)
	o.closed(p, 0, nil)
	assert.Equal(t, o.poolHooks().WaitEnd == nil, true)
	// Metrics with some hooks only.
	p2 := openProvider(t, func(c *Config) { c.Metrics = &Metrics{KeyLost: func() {}} })
	k, err := p2.Generate(bg, AES128)
	require.NoError(t, err)
	_, err = k.Seal(bg, []byte("x"), nil)
	require.NoError(t, err)
}
