package provider

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"strconv"
	"testing"

	"github.com/hsmkeys/hsmkeys/internal/pkcs11h"
	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCKRNamesCurrent: every return value of the v2.40 header the project
// compiles against has its name in the table (go generate writes it).
func TestCKRNamesCurrent(t *testing.T) {
	h, err := fs.ReadFile(pkcs11h.Headers, "pkcs11t.h")
	require.NoError(t, err)
	defs := regexp.MustCompile(`(?m)^#define\s+(CKR_[A-Z0-9_]+)\s+(0x[0-9A-Fa-f]+)UL`).FindAllSubmatch(h, -1)
	require.Greater(t, len(defs), 80)
	for _, d := range defs {
		v, err := strconv.ParseUint(string(d[2]), 0, 64)
		require.NoError(t, err)
		assert.Equal(t, string(d[1]), ckrNames[uint(v)], "0x%X", v)
	}
	// PKCS#11 3.0 additions (base §5.1).
	assert.Equal(t, "CKR_AEAD_DECRYPT_FAILED", codeName(0x42))
	assert.Equal(t, "CKR_ACTION_PROHIBITED", codeName(0x1B))
	assert.Equal(t, "CKR_VENDOR_DEFINED+0x7", codeName(pkcs11.CKR_VENDOR_DEFINED+7))
	assert.Equal(t, "CKR_UNKNOWN", codeName(0x7777))
}

func TestTokenError(t *testing.T) {
	te := &TokenError{Op: "C_Encrypt", Code: pkcs11.CKR_GENERAL_ERROR}
	assert.Equal(t, "C_Encrypt: CKR_GENERAL_ERROR (0x5)", te.Error())
	assert.Equal(t, "CKR_GENERAL_ERROR", te.Name())
	assert.Nil(t, errors.Unwrap(te), "no sentinel stands for a general error")

	for _, c := range []struct {
		code     uint
		sentinel error
	}{
		{pkcs11.CKR_DEVICE_REMOVED, ErrTokenUnavailable},
		{pkcs11.CKR_TOKEN_NOT_PRESENT, ErrTokenUnavailable},
		{pkcs11.CKR_MECHANISM_INVALID, ErrUnsupported},
		{pkcs11.CKR_DEVICE_ERROR, nil},
	} {
		t.Run(codeName(c.code), func(t *testing.T) {
			// As the token's error reaches the provider: an internal
			// p11 error, wrapped on the way.
			err := mapErr(fmt.Errorf("seal: %w", &p11.Error{Op: "C_Encrypt", Code: c.code}))
			var te *TokenError
			require.ErrorAs(t, err, &te)
			assert.Equal(t, "C_Encrypt", te.Op)
			assert.Equal(t, c.code, te.Code)
			assert.Equal(t, codeName(c.code), te.Name())
			if c.sentinel != nil {
				assert.ErrorIs(t, err, c.sentinel)
				assert.ErrorIs(t, te, c.sentinel, "the TokenError itself unwraps to its sentinel")
			} else {
				assert.NoError(t, errors.Unwrap(te))
			}
			assert.Contains(t, err.Error(), fmt.Sprintf("C_Encrypt: %s (0x%X)", codeName(c.code), c.code))
			// Mapped again (a caller of a caller): still one TokenError.
			again := mapErr(fmt.Errorf("outer: %w", err))
			var te2 *TokenError
			require.ErrorAs(t, again, &te2)
			assert.Same(t, te, te2)
		})
	}
}

// TestTokenErrorFromToken: a real refusal of the token reaches the caller
// as a *TokenError with the function and the code.
func TestTokenErrorFromToken(t *testing.T) {
	needToken(t)
	_, err := Open(context.Background(), Config{Module: tok.module, TokenLabel: tok.label, PIN: PINValue([]byte("wrong-pin-0000"))})
	var te *TokenError
	require.ErrorAs(t, err, &te)
	assert.Equal(t, "C_Login", te.Op)
	assert.Equal(t, uint(pkcs11.CKR_PIN_INCORRECT), te.Code)
	assert.Equal(t, "CKR_PIN_INCORRECT", te.Name())

	// The same from OpenAdmin: a refused SO PIN.
	a, err := OpenAdmin(context.Background(), baseConfig(), PINValue([]byte("wrong-so-pin")))
	require.NoError(t, err)
	defer a.Close()
	_, err = a.CreateKEKWith(context.Background(), uniqueName(t, "te"), KEKAES256, KEKOptions{AllowExposedAtRest: true}) // the SO login alone
	var pe *PINError
	require.ErrorAs(t, err, &pe)
	require.ErrorAs(t, err, &te)
	assert.Equal(t, "C_Login", te.Op)
	assert.Equal(t, uint(pkcs11.CKR_PIN_INCORRECT), te.Code)
}
