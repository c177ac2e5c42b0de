"""Where outputs live: the local store, the team's remote, film.lock and the outputs service."""
