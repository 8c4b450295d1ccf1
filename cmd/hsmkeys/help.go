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
	b.WriteString("\nGlobal flags (before or after the command):\n")
	b.WriteString(globalHelp())
	b.WriteString("  --version                the version of hsmkeys ('hsmkeys version')\n")
	b.WriteString("\nEnvironment:\n")
	for _, e := range environment {
		fmt.Fprintf(&b, "  %-44s %s\n", e[0], e[1])
	}
	b.WriteString(`PINs never come from a flag value. With none of these, hsmkeys asks on the
controlling terminal (/dev/tty, whatever stdin is), without echo.

Exit status: 0 success, 1 failure, 2 usage error, 130 interrupted (Ctrl-C).

Examples:
  hsmkeys tokens
  hsmkeys --uri 'pkcs11:token=hsmkeys?module-path=/usr/lib/softhsm/libsofthsm2.so' doctor
  hsmkeys --uri 'pkcs11:token=hsmkeys;model=SoftHSM%20v2?module-name=softhsm2' doctor
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

// environment is the variables hsmkeys reads, for the help and the man page.
var environment = [][2]string{
	{"HSMKEYS_MODULE, HSMKEYS_TOKEN, HSMKEYS_URI", "defaults for --module, --token, --uri"},
	{"HSMKEYS_INIT_ARGS", "default for --init-args"},
	{"HSMKEYS_EXPORT_POLICY", "default for --export-policy"},
	{"HSMKEYS_PIN, HSMKEYS_PIN_FILE", "the user PIN, or a file holding it"},
	{"HSMKEYS_SO_PIN, HSMKEYS_SO_PIN_FILE", "the Security Officer PIN, or a file holding it"},
}

const manDescription = `hsmkeys gives applications AES session keys kept inside a PKCS#11 token:
born as session objects, sensitive, exported only wrapped under a
key-encryption key (KEK) that lives on a token, as CMS AuthEnvelopedData
that openssl cms can open, and imported only by unwrapping into the token
again. PINs never come from a flag value: they come from a file
(--pin-file, --so-pin-file), the environment, the URI's pin-source, or a
prompt without echo on the controlling terminal (/dev/tty, whatever stdin
is). With --json every command, failing ones too, writes one JSON document
on stdout: {"schema": 1, "command": ..., "ok": ..., "result": ...}, and on
failure "error", "hint" and "exit". Errors go to stderr as "hsmkeys: error:
..." followed by "hsmkeys: hint: ..." where there is a next step. Progress
is shown on stderr only when it is a terminal.`

const exitStatusText = `0 success, 1 failure, 2 usage error; a command interrupted by a
signal exits with 128 plus its number (130 for SIGINT, 143 for SIGTERM),
having removed its temporary files and left earlier outputs as they were.`
