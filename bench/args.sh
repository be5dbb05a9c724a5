# Shared by bench/run.sh and bench/rates.sh, sourced first (before common.sh
# installs or builds anything) with the script's arguments: `--quick` sets
# $mode to quick, `--help` prints the script's leading comment.

# The calling script's leading comment block, without the `#!` line.
usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }

mode=full
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) mode=quick ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
