#!/bin/sh
# Creates the demo's "remote" repository: a local git repository with one commit on main,
# which the dispatcher's slot pool clones. Usage: make-origin.sh DIR
set -eu
dir=$1
git init -q -b main "$dir"
printf '# chat-app\n\nA demo repository for the dispatcher.\n' > "$dir/README.md"
git -C "$dir" add README.md
git -C "$dir" -c user.name=demo -c user.email=demo@example.invalid commit -q -m "Initial commit"
