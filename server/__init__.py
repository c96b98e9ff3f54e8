"""jobcast's server: run slow agent jobs in worker threads and push their progress live."""
