"""Packaging for abdomen_nb, nbdev 2 style: every field comes from settings.ini."""
from configparser import ConfigParser

import setuptools
config = ConfigParser(delimiters=["="])
config.read("settings.ini", encoding="utf-8")
cfg = config["DEFAULT"]

licenses = {"apache2": ("Apache Software License 2.0", "OSI Approved :: Apache Software License")}
statuses = ["1 - Planning", "2 - Pre-Alpha", "3 - Alpha", "4 - Beta", "5 - Production/Stable"]
py_versions = "3.10 3.11 3.12 3.13".split()

lic = licenses[cfg["license"]]
min_python = cfg["min_python"]
split = lambda key: cfg.get(key, "").split()  # noqa: E731

extras = {"dev": split("dev_requirements")}
for key in cfg:
    if key.startswith("extras_"):
        extras[key[len("extras_"):]] = split(key)
extras["all"] = sorted({r for name, reqs in extras.items() if name != "dev" for r in reqs})

setuptools.setup(
    name=cfg["lib_name"],
    license=lic[0],
    classifiers=[
        "Development Status :: " + statuses[int(cfg["status"])],
        "Intended Audience :: " + cfg["audience"].title(),
        "License :: " + lic[1],
        "Natural Language :: " + cfg["language"].title(),
    ] + ["Programming Language :: Python :: " + v for v in py_versions[py_versions.index(min_python):]],
    url=cfg["git_url"],
    packages=setuptools.find_packages(include=["abdomen_nb", "abdomen_nb.*"]),
    include_package_data=True,
    install_requires=split("requirements"),
    extras_require=extras,
    python_requires=">=" + min_python,
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    zip_safe=False,
    entry_points={
        "console_scripts": split("console_scripts"),
        "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
    },
    version=cfg["version"],
    description=cfg["description"],
    author=cfg["author"],
    author_email=cfg["author_email"],
    keywords=cfg["keywords"],
)
