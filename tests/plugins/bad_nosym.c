/* A shared object that is not a PRIMAL plugin: it exports no descriptor. */
int not_a_plugin(void);
int not_a_plugin(void)
{
    return 42;
}
