"""ldct-jax command line as a script: `python launch/main.py --config=configs/<job>.py[:preset]
[--workdir=DIR]`, the same as the installed `ldct-jax` command (`ldct_jax.jobs.cli`)."""

from ldct_jax.jobs import cli

if __name__ == "__main__":
    cli.main()
