package reliability

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

type kekSpec struct {
	name string
	typ  provider.KEKType
}

// newKEKs creates KEKs as the SO, with names made unique, and destroys them
// when the test ends. Call it before opening providers: the SO login cannot
// coexist with their user login in one process (provider.Admin); the
// providers opened afterwards are closed before the KEKs are destroyed.
func newKEKs(t *testing.T, specs ...kekSpec) []*provider.KEK {
	t.Helper()
	ctx := context.Background()
	a, err := provider.OpenAdmin(ctx, config(0), provider.PINValue([]byte(soPIN)))
	require.NoError(t, err)
	defer a.Close()
	var out []*provider.KEK
	t.Cleanup(func() {
		a, err := provider.OpenAdmin(ctx, config(0), provider.PINValue([]byte(soPIN)))
		require.NoError(t, err)
		defer a.Close()
		for _, k := range out {
			assert.NoError(t, a.DestroyKEK(ctx, k.ID), "destroy %v", k)
		}
	})
	suffix := fmt.Sprintf("-%x", time.Now().UnixNano())
	versions := map[string]int{}
	for _, s := range specs {
		k, err := a.CreateKEKWith(ctx, s.name+suffix, s.typ, provider.KEKOptions{AllowExposedAtRest: true}) // aes keks on softhsm only by explicit choice
		require.NoError(t, err)
		versions[s.name]++
		require.Equal(t, versions[s.name], k.Version, "%v", k)
		out = append(out, k)
	}
	return out
}

// TestKEKsAfterSessionsClosed: the token drops every session
// (C_CloseAllSessions). The provider replaces its sessions, and the KEKs it
// found before, which are token objects and still there, keep working:
// for Export, Wrap and Encrypt to the *KEK values the caller holds, and for
// Import of keys exported before, under AES and RSA KEKs. (SoftHSM forgets
// every object handle of a slot when the slot's last session closes, token
// objects included.)
func TestKEKsAfterSessionsClosed(t *testing.T) {
	need(t)
	defer goleak.VerifyNone(t)
	ctx := context.Background()
	keks := newKEKs(t, kekSpec{"closed-aes", provider.KEKAES256}, kekSpec{"closed-rsa", provider.KEKRSA2048})
	p := open(t, 4)
	k, err := p.Generate(ctx, provider.AES256)
	require.NoError(t, err)
	sealed, err := k.Seal(ctx, []byte("before"), nil)
	require.NoError(t, err)
	found := map[string]*provider.KEK{}
	blobs := map[string][]byte{}
	for i, name := range []string{"aes", "rsa"} {
		kek, err := p.KEKByID(ctx, keks[i].ID)
		require.NoError(t, err)
		found[name] = kek
		b, err := p.Export(ctx, k, []*provider.KEK{kek}, provider.Options{})
		require.NoError(t, err)
		blobs[name] = b
		// Imported once before the fault: the provider knows the KEK too.
		ik, err := p.Import(ctx, b, provider.Options{})
		require.NoError(t, err)
		require.NoError(t, ik.Destroy(ctx))
	}

	fire(t, "close_all_sessions")
	_, err = k.Seal(ctx, []byte("x"), nil)
	require.ErrorIs(t, err, provider.ErrKeyLost, "the sessions were closed")
	k, err = p.Generate(ctx, provider.AES256)
	require.NoError(t, err, "generate after the sessions were closed")

	for _, name := range []string{"aes", "rsa"} {
		t.Run(name, func(t *testing.T) {
			kek := found[name]
			_, err := p.Export(ctx, k, []*provider.KEK{kek}, provider.Options{})
			assert.NoError(t, err, "export to a KEK found before the sessions were closed")
			_, err = p.Wrap(ctx, k, kek)
			assert.NoError(t, err, "wrap under a KEK found before the sessions were closed")
			var msg bytes.Buffer
			err = p.Encrypt(ctx, &msg, strings.NewReader("message"), 7, []*provider.KEK{kek}, provider.Options{})
			assert.NoError(t, err, "encrypt to a KEK found before the sessions were closed")
			for i := range 2 { // a failure must not stick either
				ik, err := p.Import(ctx, blobs[name], provider.Options{})
				if !assert.NoError(t, err, "import %d of a key exported before the sessions were closed", i) {
					continue
				}
				got, err := ik.Open(ctx, sealed, nil)
				assert.NoError(t, err)
				assert.Equal(t, "before", string(got))
				assert.NoError(t, ik.Destroy(ctx))
			}
			again, err := p.KEK(ctx, kek.Label)
			if assert.NoError(t, err, "look the KEK up again") {
				_, err = p.Export(ctx, k, []*provider.KEK{again}, provider.Options{})
				assert.NoError(t, err, "export to the KEK looked up again")
			}
		})
	}
}

// TestKEKLookupFaults: a KEK lookup (Provider.KEK) reads the KEK's
// attributes to check its policy. A device error on one of those reads is
// the token's failure, not the KEK's: it must come back as a
// *provider.TokenError, never as ErrPolicy naming a "problem" of a good
// KEK. A session that dies under the lookup is replaced and the lookup
// retried, as for every other call.
func TestKEKLookupFaults(t *testing.T) {
	need(t)
	defer goleak.VerifyNone(t)
	ctx := context.Background()
	keks := newKEKs(t, kekSpec{"lookup-aes", provider.KEKAES256}, kekSpec{"lookup-rsa", provider.KEKRSA2048})
	p := open(t, 2)
	for _, kek := range keks {
		for _, code := range []string{"CKR_DEVICE_ERROR", "CKR_SESSION_HANDLE_INVALID"} {
			t.Run(fmt.Sprintf("%v/%s", kek.Type, code), func(t *testing.T) {
				var injected int
				// A lookup reads attributes in at most a dozen calls; the
				// fault falls on each of them in turn.
				for from := 1; from <= 14; from++ {
					st := snapshot(t, fmt.Sprintf("fail C_GetAttributeValue %s from %d count 1", code, from))
					got, err := p.KEK(ctx, kek.Label)
					after := snapshot(t)
					hit := after.Injected["C_GetAttributeValue"] > st.Injected["C_GetAttributeValue"]
					if hit {
						injected++
					}
					switch {
					case err == nil:
						assert.Equal(t, kek.ID, got.ID, "from %d", from)
					case code == "CKR_DEVICE_ERROR":
						c, ok := tokenCode(err)
						assert.True(t, ok && c == pkcs11.CKR_DEVICE_ERROR && !errors.Is(err, provider.ErrPolicy),
							"a device error on read %d of the lookup: got %v, want a *provider.TokenError with CKR_DEVICE_ERROR", from, err)
					default:
						assert.NoError(t, err, "a session closed on read %d of the lookup: it is replaced and the lookup retried", from)
					}
				}
				assert.Positive(t, injected, "no fault was injected")
			})
		}
	}
}
