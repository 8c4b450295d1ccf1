package gocloud

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"testing"

	"github.com/hsmkeys/hsmkeys/integrations/internal/softhsmtest"
	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gocloud.dev/gcerrors"
	"gocloud.dev/secrets"
	"gocloud.dev/secrets/driver"
	"gocloud.dev/secrets/drivertest"
)

// The tests run against a real SoftHSM token that TestMain makes, with two
// RSA KEKs.
var (
	bg  = context.Background()
	tok *softhsmtest.Token
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hsmkeys-gocloud-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tok = softhsmtest.New(dir, "hsmkeys-gocloud", nil)
	for _, name := range []string{"gc-a", "gc-b"} {
		if tok.Err == nil {
			_, tok.Err = tok.CreateKEK(bg, name)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// harness gives drivertest two keepers, for two KEKs, on one provider.
type harness struct{ p *provider.Provider }

func (h *harness) MakeDriver(ctx context.Context) (driver.Keeper, driver.Keeper, error) {
	a, err := newKeeper(ctx, h.p, "gc-a")
	if err != nil {
		return nil, nil, err
	}
	b, err := newKeeper(ctx, h.p, "gc-b")
	if err != nil {
		return nil, nil, err
	}
	return a, b, nil
}

func (h *harness) Close() { _ = h.p.Close() }

func newHarness(ctx context.Context, t *testing.T) (drivertest.Harness, error) {
	tok.Need(t)
	p, err := provider.Open(ctx, tok.Config())
	if err != nil {
		return nil, err
	}
	return &harness{p: p}, nil
}

// malformedIsInvalidArgument checks the code and the sentinel of a
// malformed ciphertext's error, and that ErrorAs reaches no PIN error.
type malformedIsInvalidArgument struct{}

func (malformedIsInvalidArgument) Name() string { return "malformed ciphertext is InvalidArgument" }

func (malformedIsInvalidArgument) ErrorCheck(k *secrets.Keeper, err error) error {
	if c := gcerrors.Code(err); c != gcerrors.InvalidArgument {
		return fmt.Errorf("code %v, want InvalidArgument", c)
	}
	if !errors.Is(err, provider.ErrMalformed) {
		return fmt.Errorf("%v does not match provider.ErrMalformed", err)
	}
	var pe *provider.PINError
	if k.ErrorAs(err, &pe) {
		return errors.New("ErrorAs found a PINError in a malformed-message error")
	}
	return nil
}

func TestConformance(t *testing.T) {
	drivertest.RunConformanceTests(t, newHarness, []drivertest.AsTest{malformedIsInvalidArgument{}})
}

// TestOpenKeeperURL opens keepers by URL, the token from the query or from
// the HSMKEYS_* environment, and refuses a PIN in the URL.
func TestOpenKeeperURL(t *testing.T) {
	tok.Need(t)
	t.Run("environment", func(t *testing.T) {
		tok.Setenv(t)
		k, err := secrets.OpenKeeper(bg, "hsmkeys://gc-a")
		require.NoError(t, err)
		defer k.Close()
		ct, err := k.Encrypt(bg, []byte("by environment"))
		require.NoError(t, err)
		pt, err := k.Decrypt(bg, ct)
		require.NoError(t, err)
		assert.Equal(t, "by environment", string(pt))

		// The ciphertext is the provider's CMS message.
		p, err := provider.Open(bg, tok.Config())
		require.NoError(t, err)
		defer p.Close()
		var out bytes.Buffer
		require.NoError(t, p.Decrypt(bg, &out, bytes.NewReader(ct), int64(len(ct)), provider.Options{}))
		assert.Equal(t, "by environment", out.String())
	})
	t.Run("query", func(t *testing.T) {
		for k := range tok.Env() {
			t.Setenv(k, "")
		}
		u := "hsmkeys://gc-b?" + url.Values{"module": {tok.Module}, "token": {tok.Label}, "pin_file": {tok.PINFile}}.Encode()
		k, err := secrets.OpenKeeper(bg, u)
		require.NoError(t, err)
		defer k.Close()
		ct, err := k.Encrypt(bg, []byte("by query"))
		require.NoError(t, err)
		pt, err := k.Decrypt(bg, ct)
		require.NoError(t, err)
		assert.Equal(t, "by query", string(pt))
	})
	t.Run("refused", func(t *testing.T) {
		tok.Setenv(t)
		for _, u := range []string{
			"hsmkeys://gc-a?pin=" + softhsmtest.UserPIN,
			"hsmkeys://gc-a?pin-value=" + softhsmtest.UserPIN,
			"hsmkeys://" + softhsmtest.UserPIN + "@gc-a",
			"hsmkeys://gc-a?uri=" + url.QueryEscape("pkcs11:token="+tok.Label+"?pin-value="+softhsmtest.UserPIN),
			"hsmkeys://gc-a?color=blue",
		} {
			_, err := secrets.OpenKeeper(bg, u)
			require.Error(t, err, u)
			assert.NotContains(t, err.Error(), softhsmtest.UserPIN)
		}
		_, err := secrets.OpenKeeper(bg, "hsmkeys://no-such-kek")
		require.ErrorIs(t, err, provider.ErrNotFound)
	})
}

// TestErrorCodes: the keeper's errors carry the code of their sentinel.
func TestErrorCodes(t *testing.T) {
	tok.Need(t)
	tok.Setenv(t)
	a, err := secrets.OpenKeeper(bg, "hsmkeys://gc-a")
	require.NoError(t, err)
	defer a.Close()
	b, err := secrets.OpenKeeper(bg, "hsmkeys://gc-b")
	require.NoError(t, err)
	defer b.Close()
	ct, err := b.Encrypt(bg, []byte("for b"))
	require.NoError(t, err)

	_, err = a.Decrypt(bg, ct)
	assert.Equal(t, gcerrors.NotFound, gcerrors.Code(err), "another kek's message: %v", err)
	bad := bytes.Clone(ct)
	bad[len(bad)-1] ^= 1
	_, err = b.Decrypt(bg, bad)
	assert.Equal(t, gcerrors.InvalidArgument, gcerrors.Code(err), "a forged tag: %v", err)
	assert.ErrorIs(t, err, provider.ErrAuthentication)
	ctx, cancel := context.WithCancel(bg)
	cancel()
	_, err = b.Encrypt(ctx, []byte("x"))
	assert.Equal(t, gcerrors.Canceled, gcerrors.Code(err), "%v", err)

	for _, tc := range []struct {
		err  error
		code gcerrors.ErrorCode
	}{
		{&provider.PINError{}, gcerrors.PermissionDenied},
		{fmt.Errorf("x: %w", provider.ErrPINSource), gcerrors.PermissionDenied},
		{provider.ErrKeyExhausted, gcerrors.ResourceExhausted},
		{fmt.Errorf("%w: %w", provider.ErrKeyLost, provider.ErrNotFound), gcerrors.Internal},
		{provider.ErrTokenUnavailable, gcerrors.Internal},
		{provider.ErrContext, gcerrors.InvalidArgument},
		{provider.ErrWrappedKeyInvalid, gcerrors.InvalidArgument},
		{provider.ErrUnsupported, gcerrors.Unimplemented},
		{provider.ErrPolicy, gcerrors.FailedPrecondition},
		{provider.ErrClosed, gcerrors.FailedPrecondition},
		{context.DeadlineExceeded, gcerrors.DeadlineExceeded},
		{errors.New("other"), gcerrors.Unknown},
	} {
		assert.Equal(t, tc.code, ErrorCode(tc.err), "%v", tc.err)
	}
}

// BenchmarkKeeper: one Encrypt and one Decrypt of 1 KiB through the
// keeper, on SoftHSM with an RSA-2048 KEK (docs: README, Adapters).
func BenchmarkKeeper(b *testing.B) {
	tok.Need(b)
	p, err := provider.Open(bg, tok.Config())
	require.NoError(b, err)
	defer p.Close()
	k, err := OpenKeeper(bg, p, "gc-a")
	require.NoError(b, err)
	msg := make([]byte, 1<<10)
	ct, err := k.Encrypt(bg, msg)
	require.NoError(b, err)
	b.Run("Encrypt", func(b *testing.B) {
		for b.Loop() {
			if _, err := k.Encrypt(bg, msg); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Decrypt", func(b *testing.B) {
		for b.Loop() {
			if _, err := k.Decrypt(bg, ct); err != nil {
				b.Fatal(err)
			}
		}
	})
}
