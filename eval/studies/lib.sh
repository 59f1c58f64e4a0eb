# Bash helpers shared by the study scripts of eval/studies (sourced after they cd to the repository root).

# config.yaml -> its `out:` folder
config_out() { sed -n 's/^out: *//p' "$1"; }

# FILE DIR: a recipe config or suite naming ../shared/data/books, pointed at $BOOKS when that is elsewhere (a copy
# in DIR); the file itself in a dry run (DRY_RUN=1) or where the books are where it says
with_books() {
  local file=$1 dir=$2
  if [ "${DRY_RUN:-0}" = 1 ] || [ "$BOOKS" = ../shared/data/books ]; then echo "$file"; return; fi
  mkdir -p "$dir"
  sed "s#\.\./shared/data/books#$BOOKS#g" "$file" > "$dir/$(basename "$file")"
  echo "$dir/$(basename "$file")"
}
