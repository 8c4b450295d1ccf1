package main

import (
	"fmt"
	"strings"
)

func topHelp() string {
	var b strings.Builder
	b.WriteString(`hsmkeys: session keys and key-encryption keys kept inside a PKCS#11 token

Usage:
  hsmkeys [--module PATH] [--token LABEL | --uri PKCS11-URI] [--json] COMMAND [flags]

Commands:
`)
	for _, cmd := range commands() {
		if cmd.sub == nil {
			fmt.Fprintf(&b, "  %-20s %s\n", cmd.name, cmd.summary)
			continue
		}
		for _, sub := range cmd.sub {
			fmt.Fprintf(&b, "  %-20s %s\n", cmd.name+" "+sub.name, sub.summary)
		}
	}
	b.WriteString(`
Global flags:
  --module PATH        the PKCS#11 library (default: SoftHSM's, when installed)
  --token LABEL        the token, by label
  --uri PKCS11-URI     the module and token as an RFC 7512 URI (no pin-value: use pin-source=file:...)
  --init-args STRING   passed to the module's C_Initialize (NSS softoken: "configdir='sql:/path/to/db' certPrefix='' keyPrefix='' secmod='secmod.db' flags=")
  --export-policy none|trusted
                       trusted (default): session keys may leave wrapped under trusted KEKs;
                       none: they never leave (selftest, bench --op generate|seal; commands
                       that wrap keys for KEKs are refused)
  --json               one JSON document on stdout, for scripts
  --pin-file FILE      the user PIN, first line of FILE
  --so-pin-file FILE   the Security Officer PIN, first line of FILE (kek create, import, import-public)

Environment:
  HSMKEYS_MODULE, HSMKEYS_TOKEN, HSMKEYS_URI   defaults for --module, --token, --uri
  HSMKEYS_INIT_ARGS                            default for --init-args
  HSMKEYS_EXPORT_POLICY                        default for --export-policy
  HSMKEYS_PIN, HSMKEYS_PIN_FILE                the user PIN, or a file holding it
  HSMKEYS_SO_PIN, HSMKEYS_SO_PIN_FILE          the Security Officer PIN, or a file holding it
PINs never come from a flag value. With none of these and stdin a terminal,
hsmkeys asks on the terminal, without echo.

Exit status: 0 success, 1 failure, 2 usage error.

Examples:
  hsmkeys tokens
  hsmkeys --uri 'pkcs11:token=hsmkeys?module-path=/usr/lib/softhsm/libsofthsm2.so' doctor
  hsmkeys kek create --label backup
  hsmkeys key new --kek backup -o session.key
  hsmkeys encrypt --kek backup -i notes.txt -o notes.cms
  hsmkeys decrypt -i notes.cms

Run 'hsmkeys COMMAND --help' for the flags and examples of a command.
`)
	return b.String()
}

func groupHelp(group string, cmds []*command) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage:\n  hsmkeys [global flags] %s SUBCOMMAND [flags]\n\nSubcommands:\n", group)
	for _, cmd := range cmds {
		fmt.Fprintf(&b, "  %-15s %s\n", cmd.name, cmd.summary)
	}
	fmt.Fprintf(&b, "\nRun 'hsmkeys %s SUBCOMMAND --help' for its flags and examples.\n", group)
	return b.String()
}
