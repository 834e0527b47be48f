"""The top-level package ``syncfab`` itself (pyproject maps ``syncfab`` here; its subpackages
live in the repo's top-level folders). It holds only ``__main__``, so ``python -m syncfab`` is
the ``syncfab`` command."""
