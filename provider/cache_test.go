package provider

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"github.com/hsmkeys/hsmkeys/provider/internal/cms"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeClock is the cache's clock in these tests: time moves only when the
// test says so (no sleeps).
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// cacheFixture is a provider with a data-key cache on a fake clock, a KEK,
// and a raw handle that counts the session keys on the token.
type cacheFixture struct {
	p      *Provider
	kek    *KEK
	raw    *rawToken
	clock  *fakeClock
	before int // session keys on the token before the provider made any
}

func newCacheFixture(t *testing.T, lim DataKeyCache) *cacheFixture {
	t.Helper()
	a := openAdmin(t)
	name := uniqueName(t, "cache")
	makeKEK(t, a, name, KEKAES256)
	require.NoError(t, a.Close())
	raw := openRaw(t)
	before := raw.sessionKeys(t)
	p := openProvider(t, func(c *Config) { c.DataKeyCache = &lim })
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	p.cache.now = clock.now
	kek, err := p.KEK(bg, name)
	require.NoError(t, err)
	return &cacheFixture{p: p, kek: kek, raw: raw, clock: clock, before: before}
}

// encrypt encrypts msg with ctx and returns the message and the wrapped key
// it carries.
func (f *cacheFixture) encrypt(t *testing.T, msg []byte, ectx map[string]string) ([]byte, []byte) {
	t.Helper()
	var out bytes.Buffer
	require.NoError(t, f.p.Encrypt(bg, &out, bytes.NewReader(msg), int64(len(msg)), []*KEK{f.kek}, Options{Context: ectx}))
	m, err := cms.Parse(bytes.NewReader(out.Bytes()), int64(out.Len()))
	require.NoError(t, err)
	require.Len(t, m.Header.Recipients, 1)
	return out.Bytes(), bytes.Clone(m.Header.Recipients[0].(*cms.KEKRecipient).EncryptedKey)
}

func (f *cacheFixture) decrypt(t *testing.T, ct []byte, ectx map[string]string) []byte {
	t.Helper()
	var out bytes.Buffer
	require.NoError(t, f.p.Decrypt(bg, &out, bytes.NewReader(ct), int64(len(ct)), Options{Context: ectx}))
	return out.Bytes()
}

// keys is the number of session keys the provider holds on the token now.
func (f *cacheFixture) keys(t *testing.T) int {
	t.Helper()
	return f.raw.sessionKeys(t) - f.before
}

func TestDataKeyCacheEncrypt(t *testing.T) {
	f := newCacheFixture(t, DataKeyCache{MaxMessages: 3, MaxBytes: 10 << 10, MaxAge: time.Minute})
	msg := bytes.Repeat([]byte("a"), 1000)
	ctxA := map[string]string{"tenant": "a"}

	// Hits: the same KEK and context reuse one key and its wrapping.
	ct1, w1 := f.encrypt(t, msg, ctxA)
	ct2, w2 := f.encrypt(t, msg, ctxA)
	assert.Equal(t, w1, w2, "the second message reuses the cached key's wrapping")
	assert.Equal(t, 1, f.keys(t), "one key on the token for both messages")
	assert.Equal(t, msg, f.decrypt(t, ct1, ctxA))
	assert.Equal(t, msg, f.decrypt(t, ct2, ctxA))
	assert.NotEqual(t, ct1[len(ct1)-16:], ct2[len(ct2)-16:], "a fresh nonce per message")

	// Misses: another context, or no context, gets another key.
	_, wB := f.encrypt(t, msg, map[string]string{"tenant": "b"})
	assert.NotEqual(t, w1, wB, "another context never reuses the key")
	_, wNone := f.encrypt(t, msg, nil)
	assert.NotEqual(t, w1, wNone)
	assert.NotEqual(t, wB, wNone)

	// N: the third message is the last under the key; the fourth gets a
	// new one and the old is destroyed on the token.
	_, w3 := f.encrypt(t, msg, ctxA)
	assert.Equal(t, w1, w3)
	keys := f.keys(t)
	_, w4 := f.encrypt(t, msg, ctxA)
	assert.NotEqual(t, w1, w4, "MaxMessages: a new key after 3 messages")
	assert.Equal(t, keys, f.keys(t), "the exhausted key was destroyed, its successor made")

	// T: past MaxAge the key is not used again, and is destroyed.
	f.clock.add(59 * time.Second)
	_, w5 := f.encrypt(t, msg, ctxA)
	assert.Equal(t, w4, w5, "still within MaxAge")
	f.clock.add(time.Second)
	_, w6 := f.encrypt(t, msg, ctxA)
	assert.NotEqual(t, w4, w6, "MaxAge: a new key at 60 s")

	// A message of unknown size is never cached.
	var out bytes.Buffer
	n := f.keys(t)
	require.NoError(t, f.p.Encrypt(bg, &out, bytes.NewReader(msg), -1, []*KEK{f.kek}, Options{Context: ctxA}))
	assert.Equal(t, n, f.keys(t), "its key was destroyed at once")
}

func TestDataKeyCacheBytes(t *testing.T) {
	f := newCacheFixture(t, DataKeyCache{MaxBytes: 2500})
	msg := bytes.Repeat([]byte("b"), 1000)
	_, w1 := f.encrypt(t, msg, nil)
	_, w2 := f.encrypt(t, msg, nil)
	assert.Equal(t, w1, w2, "2000 bytes under one key")
	_, w3 := f.encrypt(t, msg, nil)
	assert.NotEqual(t, w1, w3, "MaxBytes: 3000 bytes would be more than 2500")
	assert.Equal(t, 1, f.keys(t), "the first key was destroyed")
	// A message larger than MaxBytes gets a key of its own, destroyed after.
	big := bytes.Repeat([]byte("c"), 3000)
	_, w4 := f.encrypt(t, big, nil)
	assert.NotEqual(t, w3, w4)
	assert.Equal(t, 1, f.keys(t))
	_, w5 := f.encrypt(t, msg, nil)
	assert.Equal(t, w3, w5, "the cached key is still there")
}

func TestDataKeyCacheDecrypt(t *testing.T) {
	// One message per key on the encrypt side: two messages, two wrapped
	// keys, and the first key destroyed when the second is made.
	f := newCacheFixture(t, DataKeyCache{MaxAge: time.Minute, MaxMessages: 1})
	ctxA := map[string]string{"tenant": "a"}
	msg := []byte("cached on the way in")
	ct1, w1 := f.encrypt(t, msg, ctxA)
	ct2, w2 := f.encrypt(t, msg, ctxA)
	require.NotEqual(t, w1, w2)
	base := f.keys(t)
	require.Equal(t, 1, base, "the encrypt side holds the second message's key")

	assert.Equal(t, msg, f.decrypt(t, ct1, ctxA))
	assert.Equal(t, base+1, f.keys(t), "the unwrapped key is kept")
	assert.Equal(t, msg, f.decrypt(t, ct1, ctxA))
	assert.Equal(t, base+1, f.keys(t), "a hit: the same blob and context, no new unwrap")
	assert.Equal(t, msg, f.decrypt(t, ct2, ctxA))
	assert.Equal(t, base+2, f.keys(t), "another blob misses")

	// Keyed by blob and context: any change gives another entry.
	m1, err := cms.Parse(bytes.NewReader(ct1), int64(len(ct1)))
	require.NoError(t, err)
	id, ok := decryptID(m1.Header, AES256, ctxA)
	require.True(t, ok)
	other, _ := decryptID(m1.Header, AES256, map[string]string{"tenant": "b"})
	assert.NotEqual(t, id, other, "another context")
	none, _ := decryptID(m1.Header, AES256, nil)
	assert.NotEqual(t, id, none, "no context")
	aes128, _ := decryptID(m1.Header, AES128, ctxA)
	assert.NotEqual(t, id, aes128, "another algorithm")
	r := m1.Header.Recipients[0].(*cms.KEKRecipient)
	r.EncryptedKey[0] ^= 1
	flipped, _ := decryptID(m1.Header, AES256, ctxA)
	assert.NotEqual(t, id, flipped, "another wrapped key")

	// A tampered message with the cached key's recipients still fails.
	bad := bytes.Clone(ct1)
	bad[len(bad)-1] ^= 1
	var out bytes.Buffer
	err = f.p.Decrypt(bg, &out, bytes.NewReader(bad), int64(len(bad)), Options{Context: ctxA})
	require.ErrorIs(t, err, ErrAuthentication)
	assert.Empty(t, out.Bytes())
	assert.Equal(t, msg, f.decrypt(t, ct1, ctxA), "the key stays usable")

	// T: an unwrapped key is kept for at most MaxAge.
	f.clock.add(time.Minute)
	assert.Equal(t, msg, f.decrypt(t, ct1, ctxA))
	assert.Equal(t, 1, f.keys(t), "every key past MaxAge destroyed; ct1's key unwrapped again")
}

// TestDataKeyCacheClose: Close empties the cache and destroys its keys,
// counted on the token.
func TestDataKeyCacheClose(t *testing.T) {
	f := newCacheFixture(t, DataKeyCache{})
	ct, _ := f.encrypt(t, []byte("x"), nil)
	_, _ = f.encrypt(t, []byte("y"), map[string]string{"k": "v"})
	f.decrypt(t, ct, nil)
	require.Equal(t, 3, f.keys(t), "two encrypt keys and one unwrapped key cached")
	require.NoError(t, f.p.Close())
	assert.Equal(t, 0, f.keys(t), "Close destroyed every cached key")
	assert.Empty(t, f.p.cache.enc)
	assert.Empty(t, f.p.cache.dec)
}

func TestDataKeyCacheConfig(t *testing.T) {
	needToken(t)
	for _, c := range []DataKeyCache{
		{MaxMessages: MaxCacheMessages + 1},
		{MaxBytes: MaxCacheBytes + 1},
		{MaxBytes: -1},
		{MaxAge: MaxCacheAge + time.Second},
		{MaxAge: -time.Second},
		{MaxEntries: -1},
	} {
		cfg := baseConfig()
		cfg.DataKeyCache = &c
		_, err := Open(bg, cfg)
		require.ErrorIs(t, err, ErrConfig, "%+v", c)
	}
	// MaxSealsPerKey bounds MaxMessages: a cached key is retired before
	// it would refuse a message with ErrKeyExhausted.
	p := openProvider(t, func(c *Config) { c.MaxSealsPerKey = 2; c.DataKeyCache = &DataKeyCache{MaxMessages: 10} })
	assert.EqualValues(t, 2, p.cache.lim.MaxMessages)
	got, err := (&DataKeyCache{}).resolve()
	require.NoError(t, err)
	assert.Equal(t, DataKeyCache{MaxMessages: DefaultCacheMessages, MaxBytes: DefaultCacheBytes, MaxAge: DefaultCacheAge, MaxEntries: DefaultCacheEntries}, got)
}

// TestDataKeyCacheConcurrent: many goroutines encrypt and decrypt through
// one cache with small limits; every message decrypts, and once the
// provider is closed no key is left on the token. Run with -race.
func TestDataKeyCacheConcurrent(t *testing.T) {
	f := newCacheFixture(t, DataKeyCache{MaxMessages: 5, MaxEntries: 2})
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := range 8 {
		wg.Go(func() {
			ectx := map[string]string{"w": string(rune('a' + w%3))}
			for i := range 10 {
				msg := []byte{byte(w), byte(i)}
				var ct, pt bytes.Buffer
				if err := f.p.Encrypt(bg, &ct, bytes.NewReader(msg), int64(len(msg)), []*KEK{f.kek}, Options{Context: ectx}); err != nil {
					errs <- err
					return
				}
				if err := f.p.Decrypt(bg, &pt, bytes.NewReader(ct.Bytes()), int64(ct.Len()), Options{Context: ectx}); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(pt.Bytes(), msg) {
					errs <- errMismatchTest
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	assert.LessOrEqual(t, f.keys(t), 4, "at most MaxEntries keys per side")
	require.NoError(t, f.p.Close())
	assert.Equal(t, 0, f.keys(t))
}

var errMismatchTest = bytesMismatch{}

type bytesMismatch struct{}

func (bytesMismatch) Error() string { return "decrypted bytes differ" }

// TestDataKeyCacheSealLimit: with MaxSealsPerKey below MaxMessages, a
// cached key is replaced before it would refuse a message.
func TestDataKeyCacheSealLimit(t *testing.T) {
	a := openAdmin(t)
	name := uniqueName(t, "cache-seals")
	makeKEK(t, a, name, KEKAES256)
	require.NoError(t, a.Close())
	p := openProvider(t, func(c *Config) { c.MaxSealsPerKey = 2; c.DataKeyCache = &DataKeyCache{MaxMessages: 10} })
	kek, err := p.KEK(bg, name)
	require.NoError(t, err)
	wrapped := map[string]int{}
	for range 5 {
		var out bytes.Buffer
		require.NoError(t, p.Encrypt(bg, &out, bytes.NewReader([]byte("m")), 1, []*KEK{kek}, Options{}))
		m, err := cms.Parse(bytes.NewReader(out.Bytes()), int64(out.Len()))
		require.NoError(t, err)
		wrapped[string(m.Header.Recipients[0].(*cms.KEKRecipient).EncryptedKey)]++
	}
	assert.Len(t, wrapped, 3, "5 messages, 2 per key")
}
