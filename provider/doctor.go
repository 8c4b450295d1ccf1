package provider

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
	"github.com/miekg/pkcs11"
)

// Doctor checks, for real, whether this token can keep hsmkeys' promises,
// each check tried on its own whatever the others found: the mechanisms it
// needs, the token's profile (a Warning where public objects are in clear
// at rest, and a row per profile field: docs/tokens.md), the enforcement
// checks of Open (trusted-only wrapping, both templates, KEK mechanism
// restrictions, frozen session keys: each with its premise, Unchecked when
// the premise fails), each step of a session key's life (generate, seal
// and open, tamper, destroy), an exportable key, every KEK on the token
// (its attributes, and a wrap and unwrap with a throw-away key where the
// KEK can unwrap; a Warning for one exposed at rest; the fix for an
// outdated one), every foreign object (a Warning), and at the end whether
// the token serves export policy none and trusted. Each row's Needs says
// which policy it matters for. It changes nothing on the token. Open the
// provider with OpenDiagnostic so that Doctor runs on a token that Open
// refuses (no AES-GCM, no AES key wrap, a failed enforcement check); the
// KEKs are tried all the same.
func (p *Provider) Doctor(ctx context.Context) ([]EnforcementCheck, error) {
	if err := p.begin(); err != nil {
		return nil, err
	}
	p.end()
	var out []EnforcementCheck
	add := func(needs, name string, ok bool, format string, a ...any) {
		out = append(out, EnforcementCheck{Name: name, OK: ok, Needs: needs, Detail: fmt.Sprintf(format, a...)})
	}

	mechs, err := p.mod.Mechanisms(p.token.Slot)
	if err != nil {
		return nil, mapErr(err)
	}
	for _, m := range []struct {
		t     uint
		name  string
		why   string
		needs string
	}{
		{pkcs11.CKM_AES_KEY_GEN, "CKM_AES_KEY_GEN", "session keys", "none"},
		{pkcs11.CKM_AES_GCM, "CKM_AES_GCM", "seal, open, messages", "none"},
		{pkcs11.CKM_AES_CTR, "CKM_AES_CTR", "streaming decryption of large messages", "none"},
		{pkcs11.CKM_AES_ECB, "CKM_AES_ECB", "key check values", "none"},
		{pkcs11.CKM_AES_KEY_WRAP, "CKM_AES_KEY_WRAP", "aes keks (RFC 3394)", "trusted"},
		{pkcs11.CKM_RSA_PKCS_OAEP, "CKM_RSA_PKCS_OAEP", "rsa keks", "trusted"},
		{pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, "CKM_RSA_PKCS_KEY_PAIR_GEN", "creating rsa keks", "trusted"},
	} {
		ok := slices.Contains(mechs, m.t)
		detail := "offered (" + m.why + ")"
		if !ok {
			detail = "missing: no " + m.why
		}
		add(m.needs, "mechanism "+m.name, ok, "%s", detail)
	}

	prof := p.Profile()
	if prof.PublicObjectsProtectedAtRest {
		add("", "token profile", true, "%s: public objects are protected at rest", prof.Name)
	} else {
		out = append(out, EnforcementCheck{Name: "token profile", OK: true, Warning: true,
			Detail: prof.Name + ": public objects are stored in clear at rest, so an aes kek (the so can make only public ones) is readable from a copy of the token's storage without any pin; kek create makes rsa keks here"})
	}
	for _, l := range prof.Lines() {
		add("", "profile", true, "%s", l)
	}

	if err := p.begin(); err != nil {
		return nil, err
	}
	err = p.do(ctx, func(s *p11.Session) error {
		for _, r := range p.pool.CheckEnforcement(s) {
			needs := "trusted"
			if r.Name == p11.CheckSessionKeyFixed {
				needs = "none"
			}
			out = append(out, EnforcementCheck{Name: r.Name, OK: r.OK, Detail: r.Detail, Unchecked: r.Unchecked, Needs: needs})
		}
		return nil
	})
	p.end()
	if err != nil {
		return nil, mapErr(err)
	}

	// A session key's life, through the public API, a row per step, each
	// tried whatever the others gave.
	k, err := p.Generate(ctx, AES256)
	if err != nil {
		add("none", "session key generate", false, "%v", err)
		for _, n := range []string{"session key seal and open", "session key tamper", "session key destroy"} {
			out = append(out, EnforcementCheck{Name: n, Unchecked: true, Needs: "none", Detail: "could not be tried: no session key"})
		}
	} else {
		add("none", "session key generate", true, "a non-extractable aes-256 session key")
		sealed, err := k.Seal(ctx, []byte("doctor"), []byte("aad"))
		notTried := EnforcementCheck{Name: "session key tamper", Unchecked: true, Needs: "none", Detail: "could not be tried: no sealed message"}
		if err != nil {
			add("none", "session key seal and open", false, "%v", err)
			out = append(out, notTried)
		} else if pt, err := k.Open(ctx, sealed, []byte("aad")); err != nil || !bytes.Equal(pt, []byte("doctor")) {
			add("none", "session key seal and open", false, "open after seal: %v", err)
			out = append(out, notTried)
		} else {
			add("none", "session key seal and open", true, "aes-gcm on the token")
			sealed[len(sealed)-1] ^= 1
			if _, err := k.Open(ctx, sealed, []byte("aad")); !errors.Is(err, ErrAuthentication) {
				add("none", "session key tamper", false, "a tampered message was not refused as such: %v", err)
			} else {
				add("none", "session key tamper", true, "a flipped tag bit is refused (%v)", prof.BadTag)
			}
		}
		if err := k.Destroy(ctx); err != nil {
			add("none", "session key destroy", false, "%v", err)
		} else if _, err := k.Seal(ctx, nil, nil); !errors.Is(err, ErrKeyDestroyed) {
			add("none", "session key destroy", false, "a destroyed key still answered: %v", err)
		} else {
			add("none", "session key destroy", true, "gone from the token")
		}
	}
	if pk, err := p.generate(ctx, AES128, true); err != nil {
		add("trusted", "exportable session key", false, "%v", err)
	} else {
		add("trusted", "exportable session key", true, "extractable, wrap-with-trusted, sensitive")
		_ = pk.Destroy(ctx)
	}

	keks, foreign, err := p.findKEKs(ctx, "", nil)
	if err != nil {
		return nil, err
	}
	for _, kek := range keks {
		name := fmt.Sprintf("kek %s v%d", kek.Label, kek.Version)
		add := func(name string, ok bool, format string, a ...any) { add("trusted", name, ok, format, a...) }
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
			out = append(out, EnforcementCheck{Name: name, OK: true, Warning: true, Needs: "trusted",
				Detail: detail + "; EXPOSED AT REST: an aes kek is a public object, stored in clear on this token, so a copy of its storage gives the kek and every key wrapped under it (made by explicit choice)"})
			continue
		}
		add(name, true, "%s", detail)
	}
	for _, f := range foreign {
		out = append(out, EnforcementCheck{Name: "foreign object " + f.Label, OK: true, Warning: true,
			Detail: fmt.Sprintf("a %s with id %s is ignored: %s", f.Class, hex.EncodeToString(f.ID), f.Why)})
	}
	return append(out, policySummary(out)...), nil
}

// policySummary says, from the rows before it, whether the token serves
// each export policy: "none" needs every row marked none; "trusted" needs
// those and every row marked trusted, proven (an UNCHECKED row leaves it
// unproven).
func policySummary(rows []EnforcementCheck) []EnforcementCheck {
	var noneBad, trustedBad, trustedUnchecked []string
	for _, r := range rows {
		switch {
		case r.Needs == "none" && !r.OK:
			noneBad = append(noneBad, r.Name)
		case r.Needs == "trusted" && r.Unchecked:
			trustedUnchecked = append(trustedUnchecked, r.Name)
		case r.Needs == "trusted" && !r.OK:
			trustedBad = append(trustedBad, r.Name)
		}
	}
	none := EnforcementCheck{Name: "export policy none", OK: len(noneBad) == 0, Needs: "none",
		Detail: "usable: session keys, seal and open (hsmkeys --export-policy none selftest, bench seal)"}
	if !none.OK {
		none.Detail = "not usable: " + strings.Join(noneBad, ", ")
	}
	trusted := EnforcementCheck{Name: "export policy trusted", OK: none.OK && len(trustedBad) == 0 && len(trustedUnchecked) == 0, Needs: "trusted",
		Detail: "usable: keys export and import wrapped under trusted keks, messages for keks"}
	switch {
	case !none.OK || len(trustedBad) > 0:
		trusted.Detail = "not usable: " + strings.Join(append(slices.Clone(noneBad), trustedBad...), ", ")
		if len(trustedUnchecked) > 0 {
			trusted.Detail += "; not shown: " + strings.Join(trustedUnchecked, ", ")
		}
	case len(trustedUnchecked) > 0:
		trusted.Unchecked = true
		trusted.Detail = "not shown to hold: " + strings.Join(trustedUnchecked, ", ")
	}
	return []EnforcementCheck{none, trusted}
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
