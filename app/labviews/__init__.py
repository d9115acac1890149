"""The OT lab page's sections: one module a method, each with a ``render()`` that draws it."""
