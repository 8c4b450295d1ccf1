package main

import (
	"context"
	"fmt"
	"text/tabwriter"
)

var doctorSpec = spec{
	path:  "doctor",
	usage: "doctor [--pin-file FILE]",
	about: `Checks, for real, whether this token can keep hsmkeys' promises: the
token's profile (whether it protects public objects at rest), the mechanisms
it needs, trusted-only wrapping, the wrap and unwrap templates, that KEK
halves restricted to their mechanisms refuse CKM_RSA_PKCS and AES-CBC/ECB,
and that session keys refuse attribute changes (each tried with throw-away
session objects, and counted only after the same call succeeded on an
unrestricted twin; UNCHECKED where even the twin could not), a session key's
whole life, every KEK on the token (WARN for an AES KEK stored in clear at
rest), and foreign objects (WARN). It changes nothing on the token, and
opens it with export policy "none" so that it runs on a token that the other
commands refuse. Exit status 1 if any check fails.`,
	examples: `hsmkeys doctor
hsmkeys --uri 'pkcs11:token=hsmkeys?module-path=/usr/lib/softhsm/libsofthsm2.so' doctor --json`,
}

type checkJSON struct {
	Name      string `json:"name"`
	OK        bool   `json:"ok"`
	Unchecked bool   `json:"unchecked"`
	Warning   bool   `json:"warning"`
	Needs     string `json:"needs,omitempty"`
	Detail    string `json:"detail"`
}

func (c *cli) cmdDoctor(ctx context.Context, args []string) error {
	fs := c.newFlags(doctorSpec)
	c.pinFlags(fs, false)
	operands, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if err := noOperands(fs, operands); err != nil {
		return err
	}
	p, err := c.openDiagnostic(ctx)
	if err != nil {
		return err
	}
	defer p.Close()
	checks, err := p.Doctor(ctx)
	if err != nil {
		return err
	}
	failed := 0
	out := make([]checkJSON, len(checks))
	for i, ch := range checks {
		out[i] = checkJSON{ch.Name, ch.OK, ch.Unchecked, ch.Warning, ch.Needs, ch.Detail}
		if !ch.OK && !ch.Unchecked {
			failed++
		}
	}
	if c.json {
		if err := c.writeJSON(out); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "STATUS\tNEEDED FOR\tCHECK\tDETAIL\n")
		for _, ch := range checks {
			status := "ok"
			switch {
			case ch.Unchecked:
				status = "UNCHECKED"
			case !ch.OK:
				status = "FAIL"
			case ch.Warning:
				status = "WARN"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", status, neededFor(ch.Needs), ch.Name, ch.Detail)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if failed > 0 {
		return withHint(fmt.Errorf("%d of %d checks failed on token %s", failed, len(checks), p.Token()),
			"the checks marked FAIL say what the token does not enforce; KEKs with problems are refused for every use")
	}
	return nil
}

// neededFor says which export policies a doctor row matters for.
func neededFor(needs string) string {
	switch needs {
	case "none":
		return "none+trusted"
	case "trusted":
		return "trusted"
	}
	return "-"
}
