"""``python -m ncis_deploy.cli``: the ``ncis-deploy`` command without its console script."""

from ncis_deploy.cli import main

main()
