package provider

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// doneContexts are the contexts a deferred Destroy meets at the end of a
// request: cancelled, and past its deadline.
func doneContexts() map[string]func() (context.Context, context.CancelFunc) {
	return map[string]func() (context.Context, context.CancelFunc){
		"cancelled": func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(bg)
			cancel()
			return ctx, cancel
		},
		"expired": func() (context.Context, context.CancelFunc) {
			return context.WithDeadline(bg, time.Unix(0, 0))
		},
	}
}

// TestDestroyWhateverTheContext: 1000 requests each make a key and destroy
// it with their context, which has ended (the README's defer k.Destroy(ctx)
// with a request context). Every key is gone from the token, counted by an
// independent handle, and answers ErrKeyDestroyed. Before, Destroy marked
// the key destroyed, returned the context's error and left the object: 1000
// requests, 1000 objects.
func TestDestroyWhateverTheContext(t *testing.T) {
	for name, mk := range doneContexts() {
		t.Run(name, func(t *testing.T) {
			p := openProvider(t, func(c *Config) { c.MaxSessions = 4 })
			raw := openRaw(t)
			before := raw.sessionKeys(t)
			for range 1000 {
				k, err := p.Generate(bg, AES128)
				require.NoError(t, err)
				ctx, cancel := mk()
				require.NoError(t, k.Destroy(ctx))
				cancel()
				_, err = k.Seal(bg, []byte("x"), nil)
				require.ErrorIs(t, err, ErrKeyDestroyed)
			}
			assert.Equal(t, before, raw.sessionKeys(t), "session keys left on the token")
		})
	}
}

// holdSessions takes every session of p until release is closed.
func holdSessions(t *testing.T, p *Provider, n int) (release func()) {
	t.Helper()
	var held []*p11.Session
	for range n {
		s, err := p.pool.Get(bg)
		require.NoError(t, err)
		held = append(held, s)
	}
	return func() {
		for _, s := range held {
			p.pool.Put(s)
		}
	}
}

// TestDestroyKeepsKeyWhenNoSession: with every session busy and the context
// ended, Destroy cannot reach the token without waiting. It says so, the key
// stays registered (unusable), and a later Destroy or Close destroys it.
func TestDestroyKeepsKeyWhenNoSession(t *testing.T) {
	for name, mk := range doneContexts() {
		t.Run(name+", destroy again", func(t *testing.T) {
			p := openProvider(t, func(c *Config) { c.MaxSessions = 2 })
			raw := openRaw(t)
			before := raw.sessionKeys(t)
			k, err := p.Generate(bg, AES256)
			require.NoError(t, err)
			release := holdSessions(t, p, 2)
			ctx, cancel := mk()
			defer cancel()
			err = k.Destroy(ctx)
			require.ErrorIs(t, err, ctx.Err())
			assert.ErrorIs(t, err, p11.ErrPoolBusy)
			_, err = k.Seal(bg, []byte("x"), nil)
			require.ErrorIs(t, err, ErrKeyDestroyed, "a key Destroy was called for is not used again")
			assert.Equal(t, before+1, raw.sessionKeys(t), "the key waits for a session")
			release()
			require.NoError(t, k.Destroy(ctx), "a session is free now")
			assert.Equal(t, before, raw.sessionKeys(t))
			require.NoError(t, k.Destroy(ctx), "idempotent")
		})
		t.Run(name+", close", func(t *testing.T) {
			needToken(t)
			raw := openRaw(t)
			before := raw.sessionKeys(t)
			cfg := baseConfig()
			cfg.MaxSessions = 1
			p, err := Open(bg, cfg)
			require.NoError(t, err)
			k, err := p.Generate(bg, AES256)
			require.NoError(t, err)
			release := holdSessions(t, p, 1)
			ctx, cancel := mk()
			defer cancel()
			require.ErrorIs(t, k.Destroy(ctx), p11.ErrPoolBusy)
			release()
			require.NoError(t, p.Close())
			assert.Equal(t, before, raw.sessionKeys(t), "Close destroyed the key Destroy could not")
		})
	}
}

// blockingReader blocks in Read until unblock is closed; entered is closed
// when the first Read starts.
type blockingReader struct {
	entered, unblock chan struct{}
	data             []byte // returned once unblocked
}

func newBlockingReader(data []byte) *blockingReader {
	return &blockingReader{entered: make(chan struct{}), unblock: make(chan struct{}), data: data}
}

func (b *blockingReader) Read(p []byte) (int, error) {
	select {
	case <-b.entered:
	default:
		close(b.entered)
	}
	<-b.unblock
	if len(b.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p, b.data)
	b.data = b.data[n:]
	return n, nil
}

// blockingWriter accepts writes until armed, then blocks in Write until
// unblock is closed.
type blockingWriter struct {
	armed            bool
	entered, unblock chan struct{}
	buf              bytes.Buffer
}

func (b *blockingWriter) Write(p []byte) (int, error) {
	if !b.armed {
		return b.buf.Write(p)
	}
	select {
	case <-b.entered:
	default:
		close(b.entered)
	}
	<-b.unblock
	return len(p), nil
}

// TestShutdownWithBlockedOperation: an Encrypt whose src.Read never returns
// (a stalled pipe) does not hold Shutdown past its deadline; when the read
// returns, the Encrypt ends with ErrClosed, and the key it was using, the
// idle keys, the sessions and the module are all released. Close stays
// idempotent. Before, Close waited for the Encrypt without bound.
func TestShutdownWithBlockedOperation(t *testing.T) {
	fk := makeFormatKEKs(t)
	raw := openRaw(t)
	before := raw.sessionKeys(t)
	p, err := Open(bg, baseConfig())
	require.NoError(t, err)
	fk = fk.resolve(t, p)
	idle, err := p.Generate(bg, AES256) // a key no operation is using
	require.NoError(t, err)

	src := newBlockingReader(bytes.Repeat([]byte("x"), 1000))
	encErr := make(chan error, 1)
	go func() {
		var out bytes.Buffer
		encErr <- p.Encrypt(bg, &out, src, -1, []*KEK{fk.aes256}, Options{})
	}()
	<-src.entered // the Encrypt holds its key and a session, blocked in Read
	require.Equal(t, before+2, raw.sessionKeys(t))

	// A deadline that has passed: Shutdown must not wait at all.
	ctx, cancel := context.WithDeadline(bg, time.Unix(0, 0))
	defer cancel()
	err = p.Shutdown(ctx)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Equal(t, before+1, raw.sessionKeys(t), "the idle key is destroyed at once, the busy one waits")
	_, err = p.Generate(bg, AES128)
	require.ErrorIs(t, err, ErrClosed, "no new work after Shutdown")
	_, err = idle.Seal(bg, []byte("x"), nil)
	require.ErrorIs(t, err, ErrKeyDestroyed)

	close(src.unblock)
	err = <-encErr
	require.ErrorIs(t, err, ErrClosed, "the blocked Encrypt ends with ErrClosed")
	require.NoError(t, p.Close(), "Close waits for the rest of the work")
	require.NoError(t, p.Close(), "idempotent")
	require.NoError(t, p.Shutdown(ctx), "done: nothing left to wait for")
	assert.Equal(t, before, raw.sessionKeys(t), "every key destroyed")
	assert.Equal(t, 0, p.pool.Open(), "every session closed")
}

// TestShutdownWithBlockedWriter: the same with a Decrypt whose dst.Write
// does not return.
func TestShutdownWithBlockedWriter(t *testing.T) {
	fk := makeFormatKEKs(t)
	raw := openRaw(t)
	before := raw.sessionKeys(t)
	p, err := Open(bg, baseConfig())
	require.NoError(t, err)
	fk = fk.resolve(t, p)
	var msg bytes.Buffer
	require.NoError(t, p.Encrypt(bg, &msg, bytes.NewReader([]byte("hello")), 5, []*KEK{fk.aes256}, Options{}))

	dst := &blockingWriter{armed: true, entered: make(chan struct{}), unblock: make(chan struct{})}
	decErr := make(chan error, 1)
	go func() {
		decErr <- p.Decrypt(bg, dst, bytes.NewReader(msg.Bytes()), int64(msg.Len()), Options{})
	}()
	<-dst.entered
	ctx, cancel := context.WithCancel(bg)
	cancel()
	// The one-shot decryption is over when dst.Write blocks: no session,
	// no token call is held, so Shutdown may finish at once (nil) or give
	// up on its ended context first (context.Canceled); either way it
	// returns now, not when the writer does.
	if err := p.Shutdown(ctx); err != nil {
		require.ErrorIs(t, err, context.Canceled)
	}
	close(dst.unblock)
	err = <-decErr
	// The write that was blocked had been given the plaintext already; the
	// operation still reports that the provider closed under it.
	require.True(t, errors.Is(err, ErrClosed), "%v", err)
	require.NoError(t, p.Close())
	assert.Equal(t, before, raw.sessionKeys(t))
}
