package reliability

import (
	"context"
	"testing"

	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestTokenGoneAndBack: the token leaves its slot. Every operation fails
// with ErrTokenUnavailable, keys report ErrKeyLost; when it is back (its
// sessions gone, as after a restart) the same provider, not reopened, opens
// new sessions, logs in again and works.
func TestTokenGoneAndBack(t *testing.T) {
	for _, tc := range []struct {
		line string
		code uint
	}{
		{"token_gone 1", pkcs11.CKR_TOKEN_NOT_PRESENT},
		{"token_gone CKR_DEVICE_REMOVED", pkcs11.CKR_DEVICE_REMOVED},
	} {
		t.Run(tc.line, func(t *testing.T) {
			need(t)
			defer goleak.VerifyNone(t)
			const maxSessions = 4
			ctx := context.Background()
			p := open(t, maxSessions)
			burst(t, p, 8, 2) // fill the pool
			k, err := p.Generate(ctx, provider.AES256)
			require.NoError(t, err)
			sealed, err := k.Seal(ctx, []byte("before"), nil)
			require.NoError(t, err)
			// Two more providers, each with a key, to be destroyed and
			// closed while the token is away.
			q := open(t, 2)
			kq, err := q.Generate(ctx, provider.AES256)
			require.NoError(t, err)
			r := open(t, 2)
			_, err = r.Generate(ctx, provider.AES256)
			require.NoError(t, err)

			setFaults(t, tc.line)
			// The first call to see the token gone is a use of the key: it
			// learns both that the token is away and that the key is lost.
			_, err = k.Seal(ctx, []byte("while gone"), nil)
			assert.ErrorIs(t, err, provider.ErrKeyLost, "first seal while gone")
			assert.ErrorIs(t, err, provider.ErrTokenUnavailable, "first seal while gone")
			for i := range 3 {
				_, err := p.Generate(ctx, provider.AES256)
				require.ErrorIs(t, err, provider.ErrTokenUnavailable, "generate %d while gone", i)
				code, ok := tokenCode(err)
				require.True(t, ok, "%v: not a *provider.TokenError", err)
				assert.Equal(t, tc.code, code, "%v", err)

				_, err = p.CountSessionKeys(ctx)
				assert.ErrorIs(t, err, provider.ErrTokenUnavailable, "count %d while gone", i)
			}
			_, err = k.Seal(ctx, []byte("while gone"), nil)
			assert.ErrorIs(t, err, provider.ErrKeyLost, "seal while gone")
			_, err = k.Open(ctx, sealed, nil)
			assert.ErrorIs(t, err, provider.ErrKeyLost, "open while gone")
			assert.LessOrEqual(t, p.Sessions(), maxSessions)
			// The keys left with the token: "destroying a lost key succeeds:
			// it is gone" (Key.Destroy), and so does a Close that destroys
			// them.
			assert.NoError(t, kq.Destroy(ctx), "destroy a key the token took with it")
			assert.NoError(t, r.Close(), "close while the token is gone")

			before := snapshot(t) // clears token_gone: the token is back
			k2, err := p.Generate(ctx, provider.AES256)
			require.NoError(t, err, "generate after the token came back")
			require.NoError(t, roundTrip(ctx, k2, "back"))
			burst(t, p, 8, 4)
			after := snapshot(t)
			assert.Equal(t, uint64(1), after.Calls["C_Login"]-before.Calls["C_Login"], "C_Login calls after the token came back")
			assert.Positive(t, after.Calls["C_OpenSession"]-before.Calls["C_OpenSession"], "no new session opened")

			// The old key stays lost; the new one is counted on the token.
			_, err = k.Seal(ctx, []byte("after"), nil)
			assert.ErrorIs(t, err, provider.ErrKeyLost)
			n, err := p.CountSessionKeys(ctx)
			require.NoError(t, err)
			assert.Equal(t, 1, n)
			assert.LessOrEqual(t, p.Sessions(), maxSessions)
			assert.Equal(t, p.Sessions(), after.OpenSessions)
		})
	}
}
