# Sourced by the launch scripts. quote WORD: the word quoted for the shell,
# only where it needs it (readable dry runs that paste back into a shell).
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf '%s' "${1@Q}"
  fi
}
