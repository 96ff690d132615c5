# bash completion for locald-shim.  Made by scripts/generate from its parser: do not edit.
_locald_shim() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    case $COMP_CWORD in
        1) COMPREPLY=($(compgen -W "admin --help --version" -- "$cur")); return ;;
        2) [[ ${COMP_WORDS[1]} == admin ]] && COMPREPLY=($(compgen -W "cleanup" -- "$cur")); return ;;
    esac
    [[ ${COMP_WORDS[1]} == admin && ${COMP_WORDS[2]} == cleanup ]] || return
    case $prev in
        --timeout) return ;;
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "--help --interactive --no-interactive --no-progress --progress --timeout" -- "$cur"))
    else
        compopt -o filenames 2>/dev/null
        COMPREPLY=($(compgen -d -- "$cur"))
    fi
}
complete -F _locald_shim locald-shim
