package provider

// Data-key caching (opt-in, Config.DataKeyCache), in the manner of the AWS
// Encryption SDK's caching materials manager: Encrypt reuses one session
// key, and the recipients it was wrapped for, for several messages; Decrypt
// keeps a key it unwrapped for messages that carry the same wrapped key.
// The keys stay session objects on the token; the cache holds their handles
// and the wrapped bytes, which are public. docs/security.md, "Data-key
// caching", says what this trades away.

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/hsmkeys/hsmkeys/provider/internal/cms"
	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
)

// DataKeyCache bounds the reuse of session keys by Encrypt and Decrypt.
// A zero field takes its default; a field above its cap is ErrConfig.
type DataKeyCache struct {
	// MaxMessages is how many messages Encrypt encrypts under one key
	// (default DefaultCacheMessages, at most MaxCacheMessages).
	MaxMessages uint64
	// MaxBytes is how many plaintext bytes Encrypt encrypts under one key
	// (default DefaultCacheBytes, at most MaxCacheBytes).
	MaxBytes int64
	// MaxAge is how long after it was made a key is used by Encrypt, or
	// after it was unwrapped by Decrypt (default DefaultCacheAge, at most
	// MaxCacheAge).
	MaxAge time.Duration
	// MaxEntries bounds the keys each side holds at once (default
	// DefaultCacheEntries); the oldest goes first.
	MaxEntries int
}

// Defaults and caps of DataKeyCache.
const (
	DefaultCacheMessages = 1 << 12
	DefaultCacheBytes    = 1 << 30
	DefaultCacheAge      = time.Minute
	DefaultCacheEntries  = 64

	// MaxCacheMessages: AES-GCM with random 96-bit nonces may be invoked at
	// most 2^32 times under one key (NIST SP 800-38D §8.3). Exported keys
	// and Seal count against the same key's DefaultMaxSealsPerKey.
	MaxCacheMessages = 1 << 32
	// MaxCacheBytes: what AES-GCM may encrypt under one nonce (SP 800-38D
	// §5.2.1.1, 2^39-256 bits), over all the messages of one key: 2^32
	// blocks keeps the keystream blocks of all messages far below the
	// birthday bound of AES.
	MaxCacheBytes = maxGCMContent
	// MaxCacheAge: no AES-GCM bound; a day, so that a key rotated by
	// policy is not held longer by a cache.
	MaxCacheAge = 24 * time.Hour
)

func (c *DataKeyCache) resolve() (DataKeyCache, error) {
	out := *c
	if out.MaxMessages == 0 {
		out.MaxMessages = DefaultCacheMessages
	}
	if out.MaxBytes == 0 {
		out.MaxBytes = DefaultCacheBytes
	}
	if out.MaxAge == 0 {
		out.MaxAge = DefaultCacheAge
	}
	if out.MaxEntries == 0 {
		out.MaxEntries = DefaultCacheEntries
	}
	switch {
	case out.MaxMessages > MaxCacheMessages:
		return out, fmt.Errorf("%w: data key cache: %d messages per key, at most %d (SP 800-38D §8.3)", ErrConfig, out.MaxMessages, uint64(MaxCacheMessages))
	case out.MaxBytes < 0 || out.MaxBytes > MaxCacheBytes:
		return out, fmt.Errorf("%w: data key cache: %d bytes per key, at most %d", ErrConfig, out.MaxBytes, int64(MaxCacheBytes))
	case out.MaxAge < 0 || out.MaxAge > MaxCacheAge:
		return out, fmt.Errorf("%w: data key cache: age %v, at most %v", ErrConfig, out.MaxAge, MaxCacheAge)
	case out.MaxEntries < 0:
		return out, fmt.Errorf("%w: data key cache: %d entries", ErrConfig, out.MaxEntries)
	}
	return out, nil
}

// keyCache is the provider's data-key cache: one map for Encrypt (by
// recipients and context), one for Decrypt (by wrapped keys and context).
type keyCache struct {
	lim DataKeyCache
	now func() time.Time // time.Now; tests move it

	mu     sync.Mutex
	closed bool
	enc    map[[32]byte]*cacheEntry
	dec    map[[32]byte]*cacheEntry
}

// cacheEntry is one cached key. refs counts the messages using it; a
// retired entry is out of its map and its key is destroyed when refs
// reaches 0.
type cacheEntry struct {
	key        *Key
	recipients []cms.Recipient // Encrypt: the wrapped key, for each KEK
	made       time.Time
	messages   uint64
	bytes      int64
	refs       int
	retired    bool
}

func newKeyCache(c *DataKeyCache) (*keyCache, error) {
	if c == nil {
		return nil, nil
	}
	lim, err := c.resolve()
	if err != nil {
		return nil, err
	}
	return &keyCache{lim: lim, now: time.Now, enc: map[[32]byte]*cacheEntry{}, dec: map[[32]byte]*cacheEntry{}}, nil
}

// encryptID names the key Encrypt may reuse: the KEK versions in order
// (their CKA_IDs) and the encryption context. A message for other KEKs or
// another context gets another key.
func encryptID(to []*KEK, ectx map[string]string) [32]byte {
	h := sha256.New()
	put := func(b []byte) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	put([]byte("hsmkeys encrypt"))
	for _, k := range to {
		put(k.ID)
	}
	putContext(put, ectx)
	return [32]byte(h.Sum(nil))
}

// decryptID names a key Decrypt unwrapped: the message's algorithm, every
// recipient exactly as the message carries it (identifiers, algorithms,
// wrapped bytes), and the context. Another blob or context never hits.
func decryptID(h *cms.Header, alg Algorithm, ectx map[string]string) ([32]byte, bool) {
	d := sha256.New()
	put := func(b []byte) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		d.Write(n[:])
		d.Write(b)
	}
	put([]byte("hsmkeys decrypt"))
	put([]byte(alg.String()))
	for _, r := range h.Recipients {
		switch r := r.(type) {
		case *cms.KEKRecipient:
			put([]byte("kek"))
			put(r.KeyID)
			put([]byte(r.WrapAlg.String()))
			put(r.EncryptedKey)
		case *cms.KeyTransRecipient:
			put([]byte("ktri"))
			put(r.SubjectKeyID)
			put([]byte(r.Hash.String()))
			put(r.EncryptedKey)
		case *cms.OtherRecipient:
			put([]byte("other"))
			put(r.Raw)
		default:
			return [32]byte{}, false
		}
	}
	putContext(put, ectx)
	return [32]byte(d.Sum(nil)), true
}

func putContext(put func([]byte), ectx map[string]string) {
	keys := make([]string, 0, len(ectx))
	for k := range ectx {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	put([]byte("context"))
	for _, k := range keys {
		put([]byte(k))
		put([]byte(ectx[k]))
	}
}

// usable reports whether e may take one more message of size bytes now
// (size < 0: Decrypt, which counts no bytes).
func (c *keyCache) usable(e *cacheEntry, size int64, now time.Time) bool {
	if e.retired || e.key.lost.Load() || now.Sub(e.made) >= c.lim.MaxAge || now.Before(e.made) {
		return false
	}
	if size < 0 {
		return true
	}
	return e.messages < c.lim.MaxMessages && e.bytes <= c.lim.MaxBytes-size
}

// take finds a usable entry for id in m and takes a reference to it for a
// message of size bytes. An entry no longer usable is retired.
func (c *keyCache) take(m map[[32]byte]*cacheEntry, id [32]byte, size int64) (*cacheEntry, []*Key) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, nil
	}
	now := c.now()
	var dead []*Key
	e := m[id]
	if e != nil && !c.usable(e, size, now) {
		dead = c.retireLocked(m, id, e, dead)
		e = nil
	}
	if e == nil {
		return nil, dead
	}
	e.refs++
	if size >= 0 {
		e.messages++
		e.bytes += size
	}
	return e, dead
}

// add files a new entry for id in m (making room by retiring the oldest),
// with a reference for the message that made it. It returns false when
// the cache is closed or the key cannot take even this one message.
func (c *keyCache) add(m map[[32]byte]*cacheEntry, id [32]byte, e *cacheEntry, size int64) (bool, []*Key) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || (size >= 0 && (size > c.lim.MaxBytes)) {
		return false, nil
	}
	var dead []*Key
	if old := m[id]; old != nil {
		dead = c.retireLocked(m, id, old, dead)
	}
	for len(m) >= c.lim.MaxEntries && len(m) > 0 {
		var oldID [32]byte
		var oldest *cacheEntry
		for k, v := range m {
			if oldest == nil || v.made.Before(oldest.made) {
				oldID, oldest = k, v
			}
		}
		dead = c.retireLocked(m, oldID, oldest, dead)
	}
	if c.lim.MaxEntries == 0 {
		return false, dead
	}
	e.made = c.now()
	e.refs = 1
	if size >= 0 {
		e.messages, e.bytes = 1, size
	}
	m[id] = e
	return true, dead
}

// retireLocked takes e out of m; its key is destroyed (appended to dead)
// now if no message uses it, or by the last release.
func (c *keyCache) retireLocked(m map[[32]byte]*cacheEntry, id [32]byte, e *cacheEntry, dead []*Key) []*Key {
	if m[id] == e {
		delete(m, id)
	}
	if !e.retired {
		e.retired = true
		if e.refs == 0 {
			dead = append(dead, e.key)
		}
	}
	return dead
}

// release gives back a reference taken by take or add; a message that
// failed (bad) retires the entry, whose key may be in a state nobody
// should trust (ErrKeyLost, a token failure).
func (c *keyCache) release(m map[[32]byte]*cacheEntry, e *cacheEntry, bad bool) []*Key {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.refs--
	var dead []*Key
	if bad && !e.retired {
		for id, v := range m {
			if v == e {
				return c.retireLocked(m, id, e, nil)
			}
		}
		e.retired = true
	}
	if e.retired && e.refs == 0 {
		dead = append(dead, e.key)
	}
	return dead
}

// sweep retires every entry past its age, so that an idle key does not
// stay on the token long after MaxAge.
func (c *keyCache) sweep() []*Key {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	var dead []*Key
	for _, m := range []map[[32]byte]*cacheEntry{c.enc, c.dec} {
		for id, e := range m {
			if now.Sub(e.made) >= c.lim.MaxAge || now.Before(e.made) {
				dead = c.retireLocked(m, id, e, dead)
			}
		}
	}
	return dead
}

// close empties the cache: every entry retired, and the keys of those no
// message uses returned for destruction (Close destroys the others with
// every key of the provider).
func (c *keyCache) close() []*Key {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	var dead []*Key
	for _, m := range []map[[32]byte]*cacheEntry{c.enc, c.dec} {
		for id, e := range m {
			dead = c.retireLocked(m, id, e, dead)
		}
	}
	return dead
}

// destroyAll destroys retired keys; a failure leaves the key with the
// provider, which destroys it at Close.
func destroyAll(ctx context.Context, keys []*Key) {
	for _, k := range keys {
		_ = k.Destroy(context.WithoutCancel(ctx))
	}
}

// encryptKey returns the session key for one message of size bytes to the
// KEKs in to, the recipients it is already wrapped for (nil: the caller
// wraps), and done, which the caller calls with the message's error when
// it no longer uses the key. Without a cache, for a message of unknown
// size, or one larger than MaxBytes, the key is new and done destroys it.
func (p *Provider) encryptKey(ctx context.Context, to []*KEK, ectx map[string]string, size int64) (*Key, []cms.Recipient, func(error), error) {
	c := p.cache
	if c == nil || size < 0 || size > c.lim.MaxBytes {
		k, err := p.Generate(ctx, AES256)
		if err != nil {
			return nil, nil, nil, err
		}
		return k, nil, func(error) { _ = k.Destroy(context.WithoutCancel(ctx)) }, nil
	}
	destroyAll(ctx, c.sweep())
	id := encryptID(to, ectx)
	e, dead := c.take(c.enc, id, size)
	destroyAll(ctx, dead)
	if e != nil {
		return e.key, e.recipients, p.releaser(ctx, c.enc, e), nil
	}
	k, err := p.Generate(ctx, AES256)
	if err != nil {
		return nil, nil, nil, err
	}
	var rs []cms.Recipient
	err = k.use(ctx, "wrap", func(s *p11.Session) error {
		for _, kek := range to {
			r, err := p.recipientFor(s, k.obj, k.alg, kek)
			if err != nil {
				return err
			}
			rs = append(rs, r)
		}
		return nil
	})
	if err != nil {
		_ = k.Destroy(context.WithoutCancel(ctx))
		return nil, nil, nil, err
	}
	e = &cacheEntry{key: k, recipients: rs}
	ok, dead := c.add(c.enc, id, e, size)
	destroyAll(ctx, dead)
	if !ok {
		return k, rs, func(error) { _ = k.Destroy(context.WithoutCancel(ctx)) }, nil
	}
	return k, rs, p.releaser(ctx, c.enc, e), nil
}

func (p *Provider) releaser(ctx context.Context, m map[[32]byte]*cacheEntry, e *cacheEntry) func(error) {
	return func(err error) {
		destroyAll(ctx, p.cache.release(m, e, badForCache(err)))
	}
}

// badForCache: after these errors the key is not used again (the message
// itself was at fault for the others: a short read, a context that ended).
func badForCache(err error) bool {
	if err == nil || errors.Is(err, ErrAuthentication) || errors.Is(err, ErrContext) {
		return false // the message was bad, not the key
	}
	return (errors.Is(err, ErrKeyLost) || errors.Is(err, ErrKeyExhausted) || errors.Is(err, ErrKeyDestroyed) || isTokenError(err))
}

func isTokenError(err error) bool {
	_, ok := p11.CodeOf(err)
	return ok
}

// decryptKey returns the session key of a message, unwrapped under a KEK
// of this token or, with a cache, kept from an earlier message with
// exactly the same recipients and context; done gives it back.
func (p *Provider) decryptKey(ctx context.Context, h *cms.Header, alg Algorithm, ectx map[string]string) (*Key, func(error), error) {
	c := p.cache
	var id [32]byte
	ok := false
	if c != nil {
		destroyAll(ctx, c.sweep())
		if id, ok = decryptID(h, alg, ectx); ok {
			e, dead := c.take(c.dec, id, -1)
			destroyAll(ctx, dead)
			if e != nil {
				return e.key, p.releaser(ctx, c.dec, e), nil
			}
		}
	}
	k, _, err := p.unwrapRecipient(ctx, h, alg)
	if err != nil {
		return nil, nil, err
	}
	destroy := func(error) { _ = k.Destroy(context.WithoutCancel(ctx)) }
	if !ok {
		return k, destroy, nil
	}
	e := &cacheEntry{key: k}
	added, dead := c.add(c.dec, id, e, -1)
	destroyAll(ctx, dead)
	if !added {
		return k, destroy, nil
	}
	return k, p.releaser(ctx, c.dec, e), nil
}
