package reliability

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDataKeyCacheSessionsClosed: the token drops every session (and with
// them the cached session keys) under a provider with a data-key cache.
// The next Encrypt and Decrypt under a lost key fail with ErrKeyLost, at
// most once per cached key, and take that key out of the cache; the ones
// after succeed with new keys, and every message made before or after
// decrypts. Nothing is left on the token after Close.
func TestDataKeyCacheSessionsClosed(t *testing.T) {
	need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := provider.OpenAdmin(ctx, config(2), provider.PINValue([]byte(soPIN)))
	require.NoError(t, err)
	kek, err := a.CreateKEKWith(ctx, "cache-lost", provider.KEKAES256, provider.KEKOptions{AllowExposedAtRest: true})
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = a.DestroyKEK(context.Background(), kek.ID)
		_ = a.Close()
	})
	cfg := config(4)
	cfg.DataKeyCache = &provider.DataKeyCache{MaxAge: time.Hour}
	p, err := provider.Open(ctx, cfg)
	require.NoError(t, err)
	k, err := p.KEK(ctx, "cache-lost")
	require.NoError(t, err)
	msg := []byte("through a token that forgot its sessions")
	encrypt := func() ([]byte, error) {
		var out bytes.Buffer
		err := p.Encrypt(ctx, &out, bytes.NewReader(msg), int64(len(msg)), []*provider.KEK{k}, provider.Options{})
		return out.Bytes(), err
	}
	decrypt := func(ct []byte) error {
		var out bytes.Buffer
		if err := p.Decrypt(ctx, &out, bytes.NewReader(ct), int64(len(ct)), provider.Options{}); err != nil {
			return err
		}
		if !bytes.Equal(out.Bytes(), msg) {
			return errMismatch
		}
		return nil
	}
	before, err := encrypt()
	require.NoError(t, err)
	require.NoError(t, decrypt(before)) // its key now cached on both sides

	fire(t, "close_all_sessions")

	var lost int
	var after []byte
	for range 3 {
		ct, err := encrypt()
		if errors.Is(err, provider.ErrKeyLost) {
			lost++
			continue
		}
		require.NoError(t, err)
		after = ct
	}
	t.Logf("Encrypt after the sessions closed: %d of 3 met the lost key", lost)
	assert.LessOrEqual(t, lost, 1, "one Encrypt at most meets the lost cached key")
	require.NotNil(t, after)
	for _, ct := range [][]byte{before, after} {
		lost := 0
		for {
			err := decrypt(ct)
			if errors.Is(err, provider.ErrKeyLost) && lost == 0 {
				lost++
				continue
			}
			require.NoError(t, err)
			break
		}
	}
	require.NoError(t, env.ctl.Clear())
	require.NoError(t, p.Close())
	// Another provider of this process sees every session key of the
	// process (PKCS#11 v2.40 §4.4): none is left.
	check := open(t, 1)
	n, err := check.CountSessionKeys(ctx)
	require.NoError(t, err)
	assert.Equal(t, 0, n)
}
