package provider

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"

	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
	"github.com/miekg/pkcs11"
)

// Doctor checks, for real, whether this token can keep hsmkeys' promises:
// the token's profile (a Warning where public objects are in clear at
// rest), the mechanisms it needs, the enforcement checks of Open
// (trusted-only wrapping, both templates, KEK mechanism restrictions,
// frozen session keys: each with its premise, Unchecked when the premise
// fails), a session key's life (generate, seal, open, tamper, destroy),
// every KEK on the token (its attributes, and a wrap and unwrap with a
// throw-away key where the KEK can unwrap; a Warning for one exposed at
// rest; the fix for an outdated one), and every foreign object (a
// Warning). It changes nothing on the token. The provider may be opened
// with ExportNone so that Doctor can run on a token that would fail Open
// under ExportTrusted; the KEKs are tried all the same.
func (p *Provider) Doctor(ctx context.Context) ([]EnforcementCheck, error) {
	if err := p.begin(); err != nil {
		return nil, err
	}
	p.end()
	var out []EnforcementCheck
	add := func(name string, ok bool, format string, a ...any) {
		out = append(out, EnforcementCheck{Name: name, OK: ok, Detail: fmt.Sprintf(format, a...)})
	}

	mechs, err := p.mod.Mechanisms(p.token.Slot)
	if err != nil {
		return nil, mapErr(err)
	}
	for _, m := range []struct {
		t    uint
		name string
		why  string
	}{
		{pkcs11.CKM_AES_KEY_GEN, "CKM_AES_KEY_GEN", "session keys"},
		{pkcs11.CKM_AES_GCM, "CKM_AES_GCM", "seal, open, messages"},
		{pkcs11.CKM_AES_CTR, "CKM_AES_CTR", "streaming decryption of large messages"},
		{pkcs11.CKM_AES_ECB, "CKM_AES_ECB", "key check values"},
		{pkcs11.CKM_AES_KEY_WRAP, "CKM_AES_KEY_WRAP", "aes keks (RFC 3394)"},
		{pkcs11.CKM_RSA_PKCS_OAEP, "CKM_RSA_PKCS_OAEP", "rsa keks"},
		{pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, "CKM_RSA_PKCS_KEY_PAIR_GEN", "creating rsa keks"},
	} {
		ok := slices.Contains(mechs, m.t)
		detail := "offered (" + m.why + ")"
		if !ok {
			detail = "missing: no " + m.why
		}
		add("mechanism "+m.name, ok, "%s", detail)
	}

	prof := p.Profile()
	if prof.PublicObjectsProtectedAtRest {
		add("token profile", true, "%s: public objects are protected at rest", prof.Name)
	} else {
		out = append(out, EnforcementCheck{Name: "token profile", OK: true, Warning: true,
			Detail: prof.Name + ": public objects are stored in clear at rest, so an aes kek (the so can make only public ones) is readable from a copy of the token's storage without any pin; kek create makes rsa keks here"})
	}

	if err := p.begin(); err != nil {
		return nil, err
	}
	err = p.do(ctx, func(s *p11.Session) error {
		for _, r := range p.pool.CheckEnforcement(s) {
			out = append(out, EnforcementCheck{Name: r.Name, OK: r.OK, Detail: r.Detail, Unchecked: r.Unchecked})
		}
		return nil
	})
	p.end()
	if err != nil {
		return nil, mapErr(err)
	}

	// A session key's life, through the public API.
	lifeErr := func() error {
		k, err := p.Generate(ctx, AES256)
		if err != nil {
			return err
		}
		defer k.Destroy(ctx)
		sealed, err := k.Seal(ctx, []byte("doctor"), []byte("aad"))
		if err != nil {
			return err
		}
		if pt, err := k.Open(ctx, sealed, []byte("aad")); err != nil || !bytes.Equal(pt, []byte("doctor")) {
			return fmt.Errorf("open after seal: %v", err)
		}
		sealed[len(sealed)-1] ^= 1
		if _, err := k.Open(ctx, sealed, []byte("aad")); !errors.Is(err, ErrAuthentication) {
			return fmt.Errorf("a tampered message was not refused: %v", err)
		}
		if err := k.Destroy(ctx); err != nil {
			return err
		}
		if _, err := k.Seal(ctx, nil, nil); !errors.Is(err, ErrKeyDestroyed) {
			return fmt.Errorf("a destroyed key still answered: %v", err)
		}
		return nil
	}()
	if lifeErr != nil {
		add("session key", false, "%v", lifeErr)
	} else {
		add("session key", true, "generate, seal, open, tamper refused, destroy")
	}

	keks, foreign, err := p.findKEKs(ctx, "", nil)
	if err != nil {
		return nil, err
	}
	for _, kek := range keks {
		name := fmt.Sprintf("kek %s v%d", kek.Label, kek.Version)
		if len(kek.Problems) > 0 {
			switch {
			case kek.Outdated && kek.Type == KEKRSAPublic:
				add(name, false, "refused for wrapping: %s; it cannot be changed: import the public key again (hsmkeys kek import-public --label %s --pem FILE)",
					joinProblems(kek.Problems), kek.Label)
			case kek.Outdated:
				add(name, false, "refused for wrapping, still unwraps: %s; it cannot be changed: create a new version (hsmkeys kek create --label %s) and rewrap (hsmkeys key rewrap)%s",
					joinProblems(kek.Problems), kek.Label, outdatedRSANote(kek))
			default:
				add(name, false, "refused: %s", joinProblems(kek.Problems))
			}
			continue
		}
		if err := p.tryKEK(ctx, kek); err != nil {
			add(name, false, "%v", err)
			continue
		}
		detail := "attributes as required; wrap and unwrap work"
		if !kek.CanUnwrap() {
			detail = "attributes as required; wrap works (no unwrapping half here)"
		}
		if kek.ExposedAtRest {
			out = append(out, EnforcementCheck{Name: name, OK: true, Warning: true,
				Detail: detail + "; EXPOSED AT REST: an aes kek is a public object, stored in clear on this token, so a copy of its storage gives the kek and every key wrapped under it (made by explicit choice)"})
			continue
		}
		add(name, true, "%s", detail)
	}
	for _, f := range foreign {
		out = append(out, EnforcementCheck{Name: "foreign object " + f.Label, OK: true, Warning: true,
			Detail: fmt.Sprintf("a %s with id %s is ignored: %s", f.Class, hex.EncodeToString(f.ID), f.Why)})
	}
	return out, nil
}

// outdatedRSANote says what an unrestricted RSA KEK has exposed.
func outdatedRSANote(k *KEK) string {
	if k.Type.IsRSA() && k.Type != KEKRSAPublic {
		return "; treat keys wrapped under it as known to anyone who held the user pin (CKM_RSA_PKCS was allowed: a padding oracle)"
	}
	return ""
}

func joinProblems(ps []string) string {
	var b bytes.Buffer
	for i, p := range ps {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(p)
	}
	return b.String()
}

// tryKEK wraps a throw-away key under kek and, where possible, unwraps it.
// The key is made exportable (to trusted keys only) whatever the export
// policy, so that Doctor tries KEKs on a provider opened with ExportNone
// too; it is destroyed at once and the wrapped bytes are dropped.
func (p *Provider) tryKEK(ctx context.Context, kek *KEK) error {
	k, err := p.generate(ctx, AES128, true)
	if err != nil {
		return err
	}
	defer k.Destroy(ctx)
	w, err := p.Wrap(ctx, k, kek)
	if err != nil {
		return err
	}
	if !kek.CanUnwrap() {
		return nil
	}
	back, err := p.unwrapUnder(ctx, w, kek)
	if err != nil {
		return err
	}
	return back.Destroy(ctx)
}
