package reliability

// Vendor behaviour that no token here has, simulated by faultmod's
// personalities over SoftHSM (a fake on purpose: no CloudHSM, Luna or
// NSS-like GCM token is available to the tests). Under each, the provider
// must find the difference (by probing or by the token model faultmod
// reports), pass its round trips, and write messages that the plain
// SoftHSM path reads, and read the messages that path writes.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hsmkeys/hsmkeys/internal/testopenssl"

	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPersonalities(t *testing.T) {
	need(t)
	ctx := context.Background()
	keks := newKEKs(t, kekSpec{"pers-aes", provider.KEKAES256}, kekSpec{"pers-rsa", provider.KEKRSA2048})
	// An AES KEK whose value the test chose, for openssl (system openssl,
	// messages without a context open in every OpenSSL 3).
	ossl := testopenssl.First(t)
	dir := t.TempDir()
	kekValue := make([]byte, 32)
	_, _ = rand.Read(kekValue)
	kekFile := filepath.Join(dir, "kek")
	require.NoError(t, os.WriteFile(kekFile, kekValue, 0o600))
	a, err := provider.OpenAdmin(ctx, config(0), provider.PINValue([]byte(soPIN)))
	require.NoError(t, err)
	known, err := a.ImportKEKWith(ctx, fmt.Sprintf("pers-known-%x", time.Now().UnixNano()), kekFile, provider.KEKOptions{AllowExposedAtRest: true})
	require.NoError(t, err)
	require.NoError(t, a.Close())
	t.Cleanup(func() {
		a, err := provider.OpenAdmin(ctx, config(0), provider.PINValue([]byte(soPIN)))
		require.NoError(t, err)
		defer a.Close()
		assert.NoError(t, a.DestroyKEK(ctx, known.ID))
	})
	keks = append(keks, known)
	opensslReads := func(t *testing.T, m []byte) []byte {
		t.Helper()
		in, out := filepath.Join(dir, "msg"), filepath.Join(dir, "dec")
		require.NoError(t, os.WriteFile(in, m, 0o600))
		_, err := ossl.Run("cms", "-decrypt", "-binary", "-inform", "DER", "-in", in, "-out", out,
			"-secretkey", hex.EncodeToString(kekValue), "-secretkeyid", hex.EncodeToString(known.ID))
		require.NoError(t, err)
		got, err := os.ReadFile(out)
		require.NoError(t, err)
		return got
	}
	small := make([]byte, 1<<10)
	big := make([]byte, 4<<20+12345)
	_, _ = rand.Read(small)
	_, _ = rand.Read(big)

	encrypt := func(t *testing.T, p *provider.Provider, msg []byte, size int64) []byte {
		var out bytes.Buffer
		require.NoError(t, p.Encrypt(ctx, &out, bytes.NewReader(msg), size, keks, provider.Options{}))
		return out.Bytes()
	}
	decrypt := func(t *testing.T, p *provider.Provider, m []byte) []byte {
		var out bytes.Buffer
		require.NoError(t, p.Decrypt(ctx, &out, bytes.NewReader(m), int64(len(m)), provider.Options{}))
		return out.Bytes()
	}
	// Messages of the unmodified path, read under each personality.
	plain := open(t, 0)
	require.Equal(t, "SoftHSM 2", plain.Profile().Name)
	plainSmall, plainBig := encrypt(t, plain, small, -1), encrypt(t, plain, big, int64(len(big)))

	for _, c := range []struct {
		name  string
		check func(t *testing.T, pr provider.TokenProfile)
	}{
		{"iv-params", func(t *testing.T, pr provider.TokenProfile) {
			assert.Equal(t, "token, written into the gcm parameters", pr.GCMIV)
		}},
		{"iv-append", func(t *testing.T, pr provider.TokenProfile) {
			assert.Equal(t, "token, appended to the output", pr.GCMIV)
		}},
		{"cap16k", func(t *testing.T, pr provider.TokenProfile) {
			assert.Equal(t, 16<<10, pr.MaxCall, "by identity: model %q", "sim CloudHSM")
			assert.Equal(t, "AWS CloudHSM", pr.Name)
		}},
		{"no-multipart-gcm", func(t *testing.T, pr provider.TokenProfile) {
			assert.False(t, pr.MultiPartGCM)
		}},
		{"tag-invalid", func(t *testing.T, pr provider.TokenProfile) {
			assert.Equal(t, []string{"CKR_ENCRYPTED_DATA_INVALID", "CKR_ENCRYPTED_DATA_LEN_RANGE"}, pr.BadTag)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			setFaults(t, "personality "+c.name)
			p, err := provider.Open(ctx, config(0))
			require.NoError(t, err)
			pr := p.Profile()
			c.check(t, pr)

			k, err := p.Generate(ctx, provider.AES256)
			require.NoError(t, err)
			for _, n := range []int{0, 100, 20 << 10} {
				msg := make([]byte, n)
				_, _ = rand.Read(msg)
				sealed, err := k.Seal(ctx, msg, []byte("aad"))
				if n > 16<<10 && c.name == "no-multipart-gcm" {
					require.NoError(t, err)
				} else {
					require.NoError(t, err, "seal %d bytes", n)
				}
				got, err := k.Open(ctx, sealed, []byte("aad"))
				if n > 16<<10 && c.name == "cap16k" {
					// One C_Decrypt takes 16 KiB: refused, not forged.
					require.Error(t, err)
					assert.False(t, errors.Is(err, provider.ErrAuthentication), "%v", err)
					assert.ErrorIs(t, err, provider.ErrUnsupported)
					continue
				}
				require.NoError(t, err, "open %d bytes", n)
				require.Equal(t, msg, got)
				sealed[len(sealed)-1] ^= 1
				_, err = k.Open(ctx, sealed, []byte("aad"))
				require.ErrorIs(t, err, provider.ErrAuthentication)
			}
			exp, err := p.Export(ctx, k, keks[:1], provider.Options{})
			require.NoError(t, err)
			k2, err := p.Import(ctx, exp, provider.Options{})
			require.NoError(t, err)
			require.NoError(t, k2.Destroy(ctx))
			require.NoError(t, k.Destroy(ctx))

			simSmall, simBig := encrypt(t, p, small, int64(len(small))), encrypt(t, p, big, -1)
			require.Equal(t, small, decrypt(t, p, simSmall))
			require.Equal(t, big, decrypt(t, p, simBig))
			require.Equal(t, small, decrypt(t, p, plainSmall))
			require.Equal(t, big, decrypt(t, p, plainBig))
			var nw bytes.Buffer
			w, err := p.NewEncrypter(ctx, &nw, keks[1:2], provider.Options{})
			require.NoError(t, err)
			_, err = w.Write(big[:100<<10])
			require.NoError(t, err)
			require.NoError(t, w.Close())
			require.Equal(t, big[:100<<10], decrypt(t, p, nw.Bytes()))
			require.NoError(t, p.Close())

			// openssl reads what the personality wrote.
			require.Equal(t, small, opensslReads(t, simSmall))
			require.Equal(t, big, opensslReads(t, simBig))

			// The unmodified path reads what the personality wrote.
			require.NoError(t, env.ctl.Clear())
			require.Equal(t, small, decrypt(t, plain, simSmall))
			require.Equal(t, big, decrypt(t, plain, simBig))
			require.Equal(t, big[:100<<10], decrypt(t, plain, nw.Bytes()))
		})
	}
}

// TestDeviceFaultIsNotForgery: on a token whose bad tag is
// CKR_ENCRYPTED_DATA_INVALID, a CKR_GENERAL_ERROR from C_Decrypt is a
// device failure, never ErrAuthentication; on SoftHSM, where a bad tag is
// CKR_GENERAL_ERROR, it reads as one (the profile says so).
func TestDeviceFaultIsNotForgery(t *testing.T) {
	need(t)
	ctx := context.Background()
	setFaults(t, "personality tag-invalid")
	p, err := provider.Open(ctx, config(0))
	require.NoError(t, err)
	defer p.Close()
	k, err := p.Generate(ctx, provider.AES256)
	require.NoError(t, err)
	defer k.Destroy(ctx)
	sealed, err := k.Seal(ctx, []byte("hello"), nil)
	require.NoError(t, err)
	setFaults(t, "personality tag-invalid", "fail C_Decrypt CKR_GENERAL_ERROR count 1")
	_, err = k.Open(ctx, sealed, nil)
	require.Error(t, err)
	assert.False(t, errors.Is(err, provider.ErrAuthentication), "a device fault read as a forgery: %v", err)
	code, _ := tokenCode(err)
	assert.Equal(t, uint(0x5), code, "%v", err)
	setFaults(t, "personality tag-invalid")
	got, err := k.Open(ctx, sealed, nil)
	require.NoError(t, err)
	assert.Equal(t, "hello", string(got))
}

// TestDoctorWithoutGCM: a token with no AES-GCM and no AES key wrap (as
// openCryptoki 3.8.1's soft token and tpm2-pkcs11 1.9 are, TOKEN-FACTS;
// simulated by faultmod's no-gcm personality) is refused by Open, yet
// doctor opens it and reports every row, each on its own.
func TestDoctorWithoutGCM(t *testing.T) {
	need(t)
	ctx := context.Background()
	setFaults(t, "personality no-gcm")
	_, err := provider.Open(ctx, config(0))
	require.ErrorIs(t, err, provider.ErrUnsupported)
	assert.Contains(t, err.Error(), "lacks CKM_AES_GCM")

	p, err := provider.OpenDiagnostic(ctx, config(0))
	require.NoError(t, err)
	defer p.Close()
	checks, err := p.Doctor(ctx)
	require.NoError(t, err)
	got := map[string]provider.EnforcementCheck{}
	for _, c := range checks {
		t.Logf("%-28s %-8s ok=%-5v unchecked=%-5v %s", c.Name, c.Needs, c.OK, c.Unchecked, c.Detail)
		got[c.Name] = c
	}
	for _, name := range []string{
		"mechanism CKM_AES_KEY_GEN", "mechanism CKM_AES_GCM", "mechanism CKM_AES_CTR", "mechanism CKM_AES_ECB",
		"mechanism CKM_AES_KEY_WRAP", "mechanism CKM_RSA_PKCS_OAEP", "mechanism CKM_RSA_PKCS_KEY_PAIR_GEN",
		"token profile", "profile",
		"trusted-only wrapping", "wrap template", "unwrap template", "aes kek mechanisms", "rsa kek mechanisms", "session key attributes",
		"session key generate", "session key seal and open", "session key tamper", "session key destroy", "exportable session key",
		"export policy none", "export policy trusted",
	} {
		assert.Contains(t, got, name, "doctor left out a check")
	}
	assert.False(t, got["mechanism CKM_AES_GCM"].OK)
	assert.False(t, got["mechanism CKM_AES_KEY_WRAP"].OK)
	assert.True(t, got["mechanism CKM_AES_KEY_GEN"].OK)
	assert.True(t, got["trusted-only wrapping"].Unchecked, "no key wrap: the check cannot be made")
	assert.True(t, got["rsa kek mechanisms"].OK, "tried on its own although the aes checks could not run: %+v", got["rsa kek mechanisms"])
	assert.True(t, got["session key attributes"].OK)
	assert.True(t, got["session key generate"].OK)
	assert.True(t, got["session key destroy"].OK)
	assert.False(t, got["session key seal and open"].OK)
	assert.True(t, got["session key tamper"].Unchecked)
	assert.True(t, got["aes kek mechanisms"].Unchecked)
	assert.False(t, got["export policy none"].OK)
	assert.Contains(t, got["export policy none"].Detail, "mechanism CKM_AES_GCM")
	assert.False(t, got["export policy trusted"].OK)
}

// TestCloudHSMLike: the token makes its own IV (written into the
// parameters) and takes at most 16 KiB per call, as AWS CloudHSM documents
// (docs/tokens.md), simulated. Messages of any size are encrypted in parts
// of 16 KiB and the unmodified path reads them; this token decrypts a
// message only up to one call's size (its IV rules out the streaming tag
// check), and says so with ErrUnsupported, never ErrAuthentication.
func TestCloudHSMLike(t *testing.T) {
	need(t)
	ctx := context.Background()
	keks := newKEKs(t, kekSpec{"cloud-rsa", provider.KEKRSA2048})
	plain := open(t, 0)
	setFaults(t, "personality cap16k iv-params")
	p, err := provider.Open(ctx, config(0))
	require.NoError(t, err)
	defer p.Close()
	pr := p.Profile()
	assert.Equal(t, "AWS CloudHSM", pr.Name)
	assert.Equal(t, 16<<10, pr.MaxCall)
	assert.Equal(t, "token, written into the gcm parameters", pr.GCMIV)

	for _, n := range []int{1 << 10, 16<<10 - 200, 5 << 20} {
		msg := make([]byte, n)
		_, _ = rand.Read(msg)
		var m bytes.Buffer
		require.NoError(t, p.Encrypt(ctx, &m, bytes.NewReader(msg), int64(n), keks, provider.Options{}))
		var back bytes.Buffer
		err := p.Decrypt(ctx, &back, bytes.NewReader(m.Bytes()), int64(m.Len()), provider.Options{})
		if n > 16<<10 {
			require.ErrorIs(t, err, provider.ErrUnsupported)
			assert.False(t, errors.Is(err, provider.ErrAuthentication), "%v", err)
			assert.Zero(t, back.Len(), "nothing written")
		} else {
			require.NoError(t, err)
			require.Equal(t, msg, back.Bytes())
		}
		// The unmodified SoftHSM path (faultmod without a personality,
		// through the provider opened before) reads every one.
		require.NoError(t, env.ctl.Clear())
		back.Reset()
		require.NoError(t, plain.Decrypt(ctx, &back, bytes.NewReader(m.Bytes()), int64(m.Len()), provider.Options{}))
		require.Equal(t, msg, back.Bytes())
		setFaults(t, "personality cap16k iv-params")
	}
}

// TestCryptoki220: a Cryptoki 2.20 token (simulated: faultmod's
// cryptoki-2.20 refuses CKA_COPYABLE and CKA_WRAP_WITH_TRUSTED) serves
// export policy none, with templates that leave both out; under trusted it
// is refused, since a trusted-only key cannot be made there.
func TestCryptoki220(t *testing.T) {
	need(t)
	ctx := context.Background()
	setFaults(t, "personality cryptoki-2.20")
	cfg := config(0)
	cfg.ExportPolicy = provider.ExportNone
	p, err := provider.Open(ctx, cfg)
	require.NoError(t, err)
	defer p.Close()
	pr := p.Profile()
	assert.Equal(t, "2.20", pr.Cryptoki)
	assert.False(t, pr.V240Attrs)
	k, err := p.Generate(ctx, provider.AES256)
	require.NoError(t, err)
	require.NoError(t, roundTrip(ctx, k, "2.20"))
	require.NoError(t, k.Destroy(ctx))

	_, err = provider.Open(ctx, config(0))
	require.ErrorIs(t, err, provider.ErrUnsupported, "a token that cannot make trusted-only keys is refused under trusted")
}

// TestUnwrapValueLen: a token that wants CKA_VALUE_LEN in unwrap templates
// (Luna, vendor docs; simulated: faultmod's unwrap-value-len, model
// "sim Luna") gets it, by identity, and imports keys; SoftHSM, which
// refuses it, never gets it (every other test).
func TestUnwrapValueLen(t *testing.T) {
	need(t)
	ctx := context.Background()
	keks := newKEKs(t, kekSpec{"vlen-aes", provider.KEKAES256}, kekSpec{"vlen-rsa", provider.KEKRSA2048})
	setFaults(t, "personality unwrap-value-len")
	p, err := provider.Open(ctx, config(0))
	require.NoError(t, err)
	defer p.Close()
	pr := p.Profile()
	assert.Equal(t, "Thales Luna", pr.Name)
	assert.True(t, pr.UnwrapValueLen)
	assert.Equal(t, "caller", pr.GCMIV, "probed: this simulation takes the caller's iv")
	k, err := p.Generate(ctx, provider.AES256)
	require.NoError(t, err)
	defer k.Destroy(ctx)
	for _, kek := range keks {
		exp, err := p.Export(ctx, k, []*provider.KEK{kek}, provider.Options{})
		require.NoError(t, err)
		k2, err := p.Import(ctx, exp, provider.Options{})
		require.NoError(t, err, "import under %v", kek)
		require.NoError(t, k2.Destroy(ctx))
	}
}
